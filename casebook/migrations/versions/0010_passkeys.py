"""Passkeys: each clinician's WebAuthn credentials (public keys only), for signing in without a password.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

from casebook.models import UTCDateTime

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'passkeys',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('clinician_id', sa.Integer(), nullable=False),
        sa.Column('credential_id', sa.Text(), nullable=False),
        sa.Column('public_key', sa.Text(), nullable=False),
        sa.Column('sign_count', sa.BigInteger(), nullable=False),
        sa.Column('name', sa.String(80), nullable=False),
        sa.Column('transports', sa.String(200), nullable=False),
        sa.Column('created_at', UTCDateTime(), nullable=False),
        sa.Column('last_used_at', UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(['clinician_id'], ['clinicians.id'], name=op.f('fk_passkeys_clinician_id_clinicians')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_passkeys')),
        sa.UniqueConstraint('credential_id', name=op.f('uq_passkeys_credential_id')),
        sa.UniqueConstraint('clinician_id', 'name', name=op.f('uq_passkeys_clinician_name')),
    )
    op.create_index(op.f('ix_passkeys_clinician_id'), 'passkeys', ['clinician_id'])


def downgrade() -> None:
    op.drop_index(op.f('ix_passkeys_clinician_id'), table_name='passkeys')
    op.drop_table('passkeys')
