"""Two-step sign-in: each clinician's authenticator app secret (encrypted) and one-time recovery codes (hashed).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

from casebook.models import UTCDateTime

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'two_step',
        sa.Column('clinician_id', sa.Integer(), autoincrement=False, nullable=False),
        sa.Column('secret', sa.String(255), nullable=True),
        sa.Column('pending_secret', sa.String(255), nullable=True),
        sa.Column('enabled_at', UTCDateTime(), nullable=True),
        sa.Column('last_step', sa.Integer(), nullable=True),
        sa.CheckConstraint('(secret IS NULL) = (enabled_at IS NULL)', name=op.f('ck_two_step_on_with_secret')),
        sa.ForeignKeyConstraint(['clinician_id'], ['clinicians.id'], name=op.f('fk_two_step_clinician_id_clinicians')),
        sa.PrimaryKeyConstraint('clinician_id', name=op.f('pk_two_step')),
    )
    op.create_table(
        'recovery_codes',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('clinician_id', sa.Integer(), nullable=False),
        sa.Column('code_hash', sa.String(64), nullable=False),
        sa.Column('used_at', UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ['clinician_id'], ['clinicians.id'], name=op.f('fk_recovery_codes_clinician_id_clinicians')
        ),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_recovery_codes')),
    )
    op.create_index(op.f('ix_recovery_codes_clinician_id'), 'recovery_codes', ['clinician_id'])


def downgrade() -> None:
    op.drop_index(op.f('ix_recovery_codes_clinician_id'), table_name='recovery_codes')
    op.drop_table('recovery_codes')
    op.drop_table('two_step')
