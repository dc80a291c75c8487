"""initial schema: cases, arrays, analyses, outcomes, audit

Revision ID: 0001
Revises: 
Create Date: 2026-11-26
"""

from alembic import op
import sqlalchemy as sa


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('audit_events',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('action', sa.String(length=32), nullable=False),
    sa.Column('case_key', sa.String(length=32), nullable=True),
    sa.Column('detail', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('cases',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('case_key', sa.String(length=32), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('source_kind', sa.String(length=16), nullable=False),
    sa.Column('is_hu', sa.Boolean(), nullable=False),
    sa.Column('rows', sa.Integer(), nullable=False),
    sa.Column('cols', sa.Integer(), nullable=False),
    sa.Column('spacing_row_mm', sa.Float(), nullable=True),
    sa.Column('spacing_col_mm', sa.Float(), nullable=True),
    sa.Column('roi_area_px', sa.Integer(), nullable=False),
    sa.Column('roi_area_mm2', sa.Float(), nullable=True),
    sa.Column('n_category', sa.String(length=16), nullable=False),
    sa.Column('t_category', sa.String(length=16), nullable=True),
    sa.Column('tumour_size_mm', sa.Float(), nullable=True),
    sa.Column('solitary', sa.Boolean(), nullable=True),
    sa.Column('display_level', sa.Float(), nullable=False),
    sa.Column('display_width', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('cases', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_cases_case_key'), ['case_key'], unique=False)

    op.create_table('analyses',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('case_id', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('model_sha256', sa.String(length=64), nullable=False),
    sa.Column('model_name', sa.String(length=128), nullable=False),
    sa.Column('model_provenance', sa.String(length=256), nullable=False),
    sa.Column('preprocess', sa.JSON(), nullable=False),
    sa.Column('dl_probability', sa.Float(), nullable=False),
    sa.Column('dl_share_above', sa.Float(), nullable=False),
    sa.Column('dl_threshold', sa.Float(), nullable=False),
    sa.Column('n_patches', sa.Integer(), nullable=False),
    sa.Column('aggregation_rule', sa.String(length=128), nullable=False),
    sa.Column('clinical_model', sa.String(length=128), nullable=False),
    sa.Column('clinical_probability', sa.Float(), nullable=True),
    sa.Column('clinical_ci_low', sa.Float(), nullable=True),
    sa.Column('clinical_ci_high', sa.Float(), nullable=True),
    sa.Column('probabilities_id', sa.String(length=36), nullable=False),
    sa.Column('boxes_id', sa.String(length=36), nullable=False),
    sa.Column('seconds', sa.Float(), nullable=True),
    sa.ForeignKeyConstraint(['case_id'], ['cases.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('analyses', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_analyses_case_id'), ['case_id'], unique=False)

    op.create_table('outcomes',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('case_id', sa.Integer(), nullable=False),
    sa.Column('recorded_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('early_recurrence', sa.Boolean(), nullable=True),
    sa.Column('days_to_recurrence', sa.Integer(), nullable=True),
    sa.Column('days_followed', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['case_id'], ['cases.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('outcomes', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_outcomes_case_id'), ['case_id'], unique=False)

    op.create_table('stored_arrays',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('case_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('dtype', sa.String(length=16), nullable=False),
    sa.Column('shape', sa.String(length=64), nullable=False),
    sa.Column('data', sa.LargeBinary(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['case_id'], ['cases.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('stored_arrays', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_stored_arrays_case_id'), ['case_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('stored_arrays', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_stored_arrays_case_id'))

    op.drop_table('stored_arrays')
    with op.batch_alter_table('outcomes', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_outcomes_case_id'))

    op.drop_table('outcomes')
    with op.batch_alter_table('analyses', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_analyses_case_id'))

    op.drop_table('analyses')
    with op.batch_alter_table('cases', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_cases_case_key'))

    op.drop_table('cases')
    op.drop_table('audit_events')
