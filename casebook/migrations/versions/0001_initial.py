"""Clinicians, server-side sessions, conversations and append-only messages.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'clinicians',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('username', sa.String(length=64), nullable=False),
        sa.Column('display_name', sa.String(length=100), nullable=False),
        sa.Column('role', sa.String(length=16), nullable=False),
        sa.Column('password_hash', sa.String(length=255), nullable=False),
        sa.Column('disabled', sa.Boolean(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("role IN ('doctor', 'nurse', 'admin')", name=op.f('ck_clinicians_role')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_clinicians')),
        sa.UniqueConstraint('username', name=op.f('uq_clinicians_username')),
    )
    op.create_table(
        'installation',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint('id = 1', name=op.f('ck_installation_single_row')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_installation')),
    )
    op.create_table(
        'auth_sessions',
        sa.Column('id', sa.String(length=64), nullable=False),
        sa.Column('clinician_id', sa.Integer(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('last_seen_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('ended_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('end_reason', sa.String(length=32), nullable=True),
        sa.Column('user_agent', sa.String(length=256), nullable=False),
        sa.Column('address', sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ['clinician_id'], ['clinicians.id'], name=op.f('fk_auth_sessions_clinician_id_clinicians')
        ),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_auth_sessions')),
    )
    with op.batch_alter_table('auth_sessions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_auth_sessions_clinician_id'), ['clinician_id'], unique=False)

    op.create_table(
        'conversations',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('clinician_id', sa.Integer(), nullable=False),
        sa.Column('patient_id', sa.String(length=64), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('last_opened_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('last_message_at', sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ['clinician_id'], ['clinicians.id'], name=op.f('fk_conversations_clinician_id_clinicians')
        ),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_conversations')),
        sa.UniqueConstraint('clinician_id', 'patient_id', name='uq_conversations_clinician_patient'),
    )
    with op.batch_alter_table('conversations', schema=None) as batch_op:
        batch_op.create_index('ix_conversations_recent', ['clinician_id', 'last_opened_at'], unique=False)

    op.create_table(
        'messages',
        sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
        sa.Column('conversation_id', sa.Integer(), nullable=False),
        sa.Column('client_id', sa.String(length=36), nullable=False),
        sa.Column('author_id', sa.Integer(), nullable=False),
        sa.Column('sender_role', sa.String(length=16), nullable=False),
        sa.Column('text', sa.Text(), nullable=False),
        sa.Column('sent_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['author_id'], ['clinicians.id'], name=op.f('fk_messages_author_id_clinicians')),
        sa.ForeignKeyConstraint(
            ['conversation_id'], ['conversations.id'], name=op.f('fk_messages_conversation_id_conversations')
        ),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_messages')),
        sa.UniqueConstraint('conversation_id', 'client_id', name='uq_messages_conversation_client'),
    )
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.create_index('ix_messages_conversation_id_id', ['conversation_id', 'id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.drop_index('ix_messages_conversation_id_id')

    op.drop_table('messages')
    with op.batch_alter_table('conversations', schema=None) as batch_op:
        batch_op.drop_index('ix_conversations_recent')

    op.drop_table('conversations')
    with op.batch_alter_table('auth_sessions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_auth_sessions_clinician_id'))

    op.drop_table('auth_sessions')
    op.drop_table('installation')
    op.drop_table('clinicians')
