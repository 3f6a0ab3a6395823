"""Corrections (a message amending another) and entered-in-error marks; nothing is edited in place.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.add_column(sa.Column('amends_id', BigId, nullable=True))
        batch_op.create_foreign_key(op.f('fk_messages_amends_id_messages'), 'messages', ['amends_id'], ['id'])
    op.create_table(
        'entered_in_error',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('message_id', BigId, nullable=False),
        sa.Column('marked_by', sa.Integer(), nullable=False),
        sa.Column('marked_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['message_id'], ['messages.id'], name=op.f('fk_entered_in_error_message_id_messages')),
        sa.ForeignKeyConstraint(
            ['marked_by'], ['clinicians.id'], name=op.f('fk_entered_in_error_marked_by_clinicians')
        ),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_entered_in_error')),
        sa.UniqueConstraint('message_id', name=op.f('uq_entered_in_error_message_id')),
    )


def downgrade() -> None:
    op.drop_table('entered_in_error')
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.drop_constraint(op.f('fk_messages_amends_id_messages'), type_='foreignkey')
        batch_op.drop_column('amends_id')
