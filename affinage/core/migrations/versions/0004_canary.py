"""Canary promotion: the running canary on the registry pointer, and the arm that answered each interaction

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05 08:09:46.198253
"""

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('interactions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('arm', sa.String(length=16), nullable=True))
        batch_op.create_index(batch_op.f('ix_interactions_arm'), ['arm'], unique=False)

    with op.batch_alter_table('registry_pointer', schema=None) as batch_op:
        batch_op.add_column(sa.Column('canary', sa.JSON(), nullable=True))



def downgrade() -> None:
    with op.batch_alter_table('registry_pointer', schema=None) as batch_op:
        batch_op.drop_column('canary')

    with op.batch_alter_table('interactions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_interactions_arm'))
        batch_op.drop_column('arm')

