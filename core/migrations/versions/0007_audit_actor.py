"""audit_events: who acted (actor), with which model and input; append-only by trigger

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02

The triggers make the database itself refuse UPDATE, DELETE (and on PostgreSQL TRUNCATE) of an
audit event, whatever code asks. They do not stop the table's owner from dropping a trigger:
where that matters, let another role own the schema and grant the application INSERT and
SELECT only (README, Shared deployment).
"""

import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None

REFUSAL = 'audit events are append-only'


def upgrade() -> None:
    with op.batch_alter_table('audit_events', schema=None) as batch_op:
        batch_op.add_column(sa.Column('actor', sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column('model_sha256', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('input_sha256', sa.String(length=64), nullable=True))
    if op.get_bind().dialect.name == 'postgresql':
        op.execute(
            "CREATE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN RAISE EXCEPTION '{REFUSAL}'; END $$"
        )
        op.execute(
            "CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events "
            "FOR EACH ROW EXECUTE FUNCTION audit_events_append_only()"
        )
        op.execute(
            "CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events "
            "FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only()"
        )
    else:
        for event in ('UPDATE', 'DELETE'):
            op.execute(
                f"CREATE TRIGGER audit_events_no_{event.lower()} BEFORE {event} ON audit_events "
                f"BEGIN SELECT RAISE(ABORT, '{REFUSAL}'); END"
            )


def downgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        op.execute('DROP TRIGGER audit_events_no_truncate ON audit_events')
        op.execute('DROP TRIGGER audit_events_append_only ON audit_events')
        op.execute('DROP FUNCTION audit_events_append_only()')
    else:
        for event in ('update', 'delete'):
            op.execute(f'DROP TRIGGER audit_events_no_{event}')
    with op.batch_alter_table('audit_events', schema=None) as batch_op:
        batch_op.drop_column('input_sha256')
        batch_op.drop_column('model_sha256')
        batch_op.drop_column('actor')
