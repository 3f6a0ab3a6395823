"""The audit trail as 16 hash chains side by side, each with its own head row, instead of one.

Every audited action appended to one chain whose one head row stayed locked until the commit: one commit at a
time on the whole database (bench/write_ceiling.py: ~1,000 sends/s, falling past 4 writers). Now a row goes to
the chain of who acted (casebook.services.audit.chain_of), so writers of different clinicians lock different
head rows and commit side by side.

- audit_events gets `chain` (1..16). The rows already there become chain 1's first rows, as they are: their
  hashes stay in the form they were made in (without the chain number). `seq` stays the order of the whole
  trail; on PostgreSQL a sequence (audit_events_seq) now gives it, taken after the chain's head is locked.
- audit_head gets one row per chain (ids 1..16; row 1 is the old head) and `legacy`: chain 1's rows with seq
  up to it are in the old form (the number of rows there were at this migration).
- PostgreSQL's audit_append (migration 0005) takes the chain and hashes the new form, which includes the
  chain number and seq: the SHA-256 of the compact JSON of
  [chain, seq, at, action, actor_id, actor, patient_id, address, detail, prev_hash].

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04
"""

import importlib.util
from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None

CHAINS = 16  # as casebook.models.AUDIT_CHAINS; fixed here as it was made
GENESIS = '0' * 64
BIG = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')

OLD_APPEND = (
    'DROP FUNCTION IF EXISTS audit_append(timestamptz, text, varchar, integer, varchar, varchar, varchar, varchar)'
)
# The caller sends the middle seven fields as `middle` (their JSON without brackets, as Python spells it); chain
# and seq are integers and prev_hash 64 hex digits, spelled alike in JSON by Python and by this concatenation.
# The chain's head is locked first, then seq is taken: within a chain, seq grows with the chain's order.
APPEND = """
CREATE FUNCTION audit_append(
    p_chain integer, p_at timestamptz, p_middle text, p_action varchar, p_actor_id integer, p_actor varchar,
    p_patient_id varchar, p_address varchar, p_detail varchar
) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    v_count bigint;
    v_prev varchar(64);
    v_seq bigint;
    v_hash varchar(64);
BEGIN
    SELECT seq + 1, hash INTO v_count, v_prev FROM audit_head WHERE id = p_chain FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'there is no audit chain %', p_chain;
    END IF;
    v_seq := nextval('audit_events_seq');
    v_hash := encode(sha256(convert_to(
        '[' || p_chain || ',' || v_seq || ',' || p_middle || ',"' || v_prev || '"]', 'UTF8')), 'hex');
    INSERT INTO audit_events (seq, at, action, actor_id, actor, patient_id, address, detail, prev_hash, hash, chain)
    VALUES (v_seq, p_at, p_action, p_actor_id, p_actor, p_patient_id, p_address, p_detail, v_prev, v_hash, p_chain);
    UPDATE audit_head SET seq = v_count, hash = v_hash WHERE id = p_chain;
    RETURN v_seq;
END $$
"""


NEW_APPEND_DROP = OLD_APPEND.replace('audit_append(', 'audit_append(integer, ')


def _one_chain_function() -> str:
    """Migration 0005's audit_append (the one chain), as that migration makes it: for downgrade."""
    spec = importlib.util.spec_from_file_location(
        'casebook_migration_0005', Path(__file__).with_name('0005_audit_append.py')
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.APPEND


def upgrade() -> None:
    bind = op.get_bind()
    postgres = bind.dialect.name == 'postgresql'
    if postgres:  # nobody appends the old way while the chains are made
        op.execute(sa.text('LOCK TABLE audit_head, audit_events IN EXCLUSIVE MODE'))
    op.add_column('audit_events', sa.Column('chain', sa.Integer(), nullable=False, server_default='1'))
    op.drop_index('ix_audit_events_at', 'audit_events')
    op.create_index('ix_audit_events_at_seq', 'audit_events', ['at', 'seq'])
    op.create_index('ix_audit_events_chain_seq', 'audit_events', ['chain', 'seq'])
    with op.batch_alter_table('audit_head') as batch:  # SQLite: the table is made again, without the old check
        batch.add_column(sa.Column('legacy', BIG, nullable=False, server_default='0'))
        batch.drop_constraint(op.f('ck_audit_head_single_row'), type_='check')
        batch.create_check_constraint(op.f('ck_audit_head_chain_number'), f'id BETWEEN 1 AND {CHAINS}')
    bind.execute(sa.text('UPDATE audit_head SET legacy = seq WHERE id = 1'))
    bind.execute(
        sa.text('INSERT INTO audit_head (id, seq, hash, legacy) VALUES (:id, 0, :genesis, 0)'),
        [{'id': n, 'genesis': GENESIS} for n in range(2, CHAINS + 1)],
    )
    if postgres:
        start = bind.scalar(sa.text('SELECT coalesce(max(seq), 0) + 1 FROM audit_events'))
        op.execute(sa.text(f'CREATE SEQUENCE audit_events_seq START WITH {int(start)} OWNED BY audit_events.seq'))
        op.execute(sa.text(OLD_APPEND))
        op.execute(sa.text(APPEND))


def downgrade() -> None:
    """Back to the one chain, only while every row is still in its old form (none appended since): a row of the
    chains' form hashes its chain number, and the one chain's verify would call it broken."""
    bind = op.get_bind()
    postgres = bind.dialect.name == 'postgresql'
    if postgres:
        op.execute(sa.text('LOCK TABLE audit_head, audit_events IN EXCLUSIVE MODE'))
    legacy = bind.scalar(sa.text('SELECT legacy FROM audit_head WHERE id = 1')) or 0
    if bind.scalar(sa.text('SELECT count(*) FROM audit_events WHERE chain <> 1 OR seq > :legacy'), {'legacy': legacy}):
        raise RuntimeError('audit rows were appended to the chains since migration 0011: they cannot be made one chain')
    if postgres:
        op.execute(sa.text(NEW_APPEND_DROP))
        op.execute(sa.text('DROP SEQUENCE audit_events_seq'))
        op.execute(sa.text(_one_chain_function()))
    bind.execute(sa.text('DELETE FROM audit_head WHERE id <> 1'))
    with op.batch_alter_table('audit_head') as batch:
        batch.drop_constraint(op.f('ck_audit_head_chain_number'), type_='check')
        batch.create_check_constraint(op.f('ck_audit_head_single_row'), 'id = 1')
        batch.drop_column('legacy')
    op.drop_index('ix_audit_events_chain_seq', 'audit_events')
    op.drop_index('ix_audit_events_at_seq', 'audit_events')
    op.create_index('ix_audit_events_at', 'audit_events', ['at'])
    op.drop_column('audit_events', 'chain')
