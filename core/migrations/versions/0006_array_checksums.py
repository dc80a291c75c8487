"""stored_arrays.sha256: a checksum of each stored array's bytes, verified on load

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02

Rows written before this revision get the checksum of the bytes they hold now: damage
that happened earlier cannot be told apart, damage from now on is found on load.
"""

import hashlib

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('stored_arrays', schema=None) as batch_op:
        batch_op.add_column(sa.Column('sha256', sa.String(length=64), nullable=True))
    connection = op.get_bind()
    arrays = sa.table('stored_arrays', sa.column('id', sa.String), sa.column('data', sa.LargeBinary),
                      sa.column('sha256', sa.String))
    # one row at a time: a large database's arrays never sit in memory together
    ids = [row.id for row in connection.execute(sa.select(arrays.c.id))]
    for array_id in ids:
        data = connection.execute(sa.select(arrays.c.data).where(arrays.c.id == array_id)).scalar_one()
        connection.execute(
            arrays.update().where(arrays.c.id == array_id).values(sha256=hashlib.sha256(data).hexdigest())
        )
    with op.batch_alter_table('stored_arrays', schema=None) as batch_op:
        batch_op.alter_column('sha256', existing_type=sa.String(length=64), nullable=False)


def downgrade() -> None:
    with op.batch_alter_table('stored_arrays', schema=None) as batch_op:
        batch_op.drop_column('sha256')
