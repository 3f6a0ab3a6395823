"""The append-only, hash-chained audit trail.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

from casebook.models import BigId, UTCDateTime

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

GENESIS = '0' * 64

SQLITE_GUARDS = [
    """CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
       BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END""",
    """CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
       BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END""",
]
# restrict_violation (SQLSTATE 23001), an integrity error as SQLite's RAISE(ABORT) is: the same exception on both
POSTGRESQL_GUARDS = [
    """CREATE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
       BEGIN RAISE EXCEPTION 'the audit trail is append-only' USING ERRCODE = 'restrict_violation'; END $$""",
    """CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON audit_events
       FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only()""",
]


def upgrade() -> None:
    op.create_table(
        'audit_events',
        sa.Column('seq', BigId, primary_key=True, autoincrement=False),
        sa.Column('at', UTCDateTime(), nullable=False),
        sa.Column('action', sa.String(40), nullable=False),
        sa.Column('actor_id', sa.Integer(), nullable=True),
        sa.Column('actor', sa.String(64), nullable=False),
        sa.Column('patient_id', sa.String(64), nullable=True),
        sa.Column('address', sa.String(64), nullable=False),
        sa.Column('detail', sa.String(200), nullable=False),
        sa.Column('prev_hash', sa.String(64), nullable=False),
        sa.Column('hash', sa.String(64), nullable=False),
    )
    op.create_index('ix_audit_events_at', 'audit_events', ['at'])
    op.create_index('ix_audit_events_actor_id', 'audit_events', ['actor_id'])
    op.create_table(
        'audit_head',
        sa.Column('id', sa.Integer(), primary_key=True),
        sa.Column('seq', BigId, nullable=False),
        sa.Column('hash', sa.String(64), nullable=False),
        sa.CheckConstraint('id = 1', name=op.f('ck_audit_head_single_row')),
    )
    op.get_bind().execute(
        sa.text('INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, :genesis)'), {'genesis': GENESIS}
    )
    dialect = op.get_bind().dialect.name
    for statement in SQLITE_GUARDS if dialect == 'sqlite' else POSTGRESQL_GUARDS if dialect == 'postgresql' else []:
        op.execute(sa.text(statement))


def downgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        op.execute(sa.text('DROP TRIGGER IF EXISTS audit_events_append_only ON audit_events'))
        op.execute(sa.text('DROP FUNCTION IF EXISTS audit_events_append_only()'))
    op.drop_table('audit_head')
    op.drop_index('ix_audit_events_actor_id', 'audit_events')
    op.drop_index('ix_audit_events_at', 'audit_events')
    op.drop_table('audit_events')
