"""analyses.training_data (what the weights were trained on); cases.spacing_source and export window

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29

Analyses saved before this revision stored only the model's provenance sentence. Those the
first release wrote for synthetic phantoms and untrained weights are mapped back here. Its
"trained on N patients of the local cohort" proves nothing: it was written whenever a run was
not flagged synthetic (phantoms included), so it becomes "unknown", as does anything else;
the app treats "unknown" as "not known to be trained on patients".
"""

from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('analyses', schema=None) as batch_op:
        batch_op.add_column(sa.Column('training_data', sa.String(length=32), nullable=False, server_default='unknown'))
    analyses = sa.table('analyses', sa.column('model_provenance', sa.String), sa.column('training_data', sa.String))
    op.execute(
        analyses.update()
        .where(analyses.c.model_provenance.like('trained on synthetic phantoms%'))
        .values(training_data='synthetic phantoms')
    )
    op.execute(
        analyses.update().where(analyses.c.model_provenance.like('untrained%')).values(training_data='untrained')
    )
    with op.batch_alter_table('cases', schema=None) as batch_op:
        batch_op.add_column(sa.Column('spacing_source', sa.String(length=8), nullable=True))
        batch_op.add_column(sa.Column('export_window_level', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('export_window_width', sa.Float(), nullable=True))
    cases = sa.table('cases', sa.column('spacing_row_mm', sa.Float), sa.column('spacing_source', sa.String))
    op.execute(cases.update().where(cases.c.spacing_row_mm.isnot(None)).values(spacing_source='header'))


def downgrade() -> None:
    with op.batch_alter_table('cases', schema=None) as batch_op:
        batch_op.drop_column('export_window_width')
        batch_op.drop_column('export_window_level')
        batch_op.drop_column('spacing_source')
    with op.batch_alter_table('analyses', schema=None) as batch_op:
        batch_op.drop_column('training_data')
