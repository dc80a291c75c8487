"""clinical_models: versions of the clinical model refitted on local patients

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'clinical_models',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('formula', sa.String(length=32), nullable=False),
        sa.Column('fitted_to', sa.String(length=128), nullable=False),
        sa.Column('fit', sa.JSON(), nullable=False),
        sa.Column('in_use', sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index(
        'ix_clinical_models_one_in_use',
        'clinical_models',
        ['in_use'],
        unique=True,
        sqlite_where=sa.text('in_use'),
        postgresql_where=sa.text('in_use'),
    )


def downgrade() -> None:
    op.drop_index('ix_clinical_models_one_in_use', table_name='clinical_models')
    op.drop_table('clinical_models')
