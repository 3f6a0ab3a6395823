"""PostgreSQL: append to the audit chain in one statement (a function), so its row lock is short.

Every audited action (each message sent, each sign-in) advances the chain's one head row, and the row stays
locked until the transaction commits. Done as three statements from Python, each waited for by a database
thread that must win the interpreter back from a busy event loop between them, the lock was held for
milliseconds and every other writer on every instance queued behind it (bench/cluster_load.py, 500 tabs on
one instance: 6-9 backends waiting on that lock at any moment, send p99 0.6 s). The function reads the head,
computes the row's hash exactly as casebook.services.audit.row_hash does (the caller passes the JSON of the
row's middle fields), inserts the row and moves the head: one round trip. SQLite keeps the Python path (one
writer at a time there anyway).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

# row_hash hashes json.dumps([seq, at, action, actor_id, actor, patient_id, address, detail, prev_hash]) with
# ',' and ':' separators and ensure_ascii=False. The caller sends the middle seven as `middle` (that JSON
# without its brackets); seq is an integer and prev_hash is 64 hex digits, so both are spelled the same in
# JSON by Python and by the concatenation below.
APPEND = """
CREATE FUNCTION audit_append(
    p_at timestamptz, p_middle text, p_action varchar, p_actor_id integer, p_actor varchar,
    p_patient_id varchar, p_address varchar, p_detail varchar
) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    v_seq bigint;
    v_prev varchar(64);
    v_hash varchar(64);
BEGIN
    SELECT seq + 1, hash INTO v_seq, v_prev FROM audit_head WHERE id = 1 FOR UPDATE;
    v_hash := encode(sha256(convert_to('[' || v_seq || ',' || p_middle || ',"' || v_prev || '"]', 'UTF8')), 'hex');
    INSERT INTO audit_events (seq, at, action, actor_id, actor, patient_id, address, detail, prev_hash, hash)
    VALUES (v_seq, p_at, p_action, p_actor_id, p_actor, p_patient_id, p_address, p_detail, v_prev, v_hash);
    UPDATE audit_head SET seq = v_seq, hash = v_hash WHERE id = 1;
    RETURN v_seq;
END $$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        op.execute(sa.text(APPEND))


def downgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        op.execute(sa.text('DROP FUNCTION IF EXISTS audit_append'))
