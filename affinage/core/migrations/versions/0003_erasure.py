"""The right to be forgotten: the end customer on interactions, feedback and examples, the erasures log, and the
registry's per-version flags ("trained on erased data").

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04 17:58:47.063061
"""

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('erasures',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('actor', sa.String(length=200), nullable=False),
    sa.Column('selector_kind', sa.String(length=16), nullable=False),
    sa.Column('selector_hash', sa.String(length=64), nullable=False),
    sa.Column('interaction_ids', sa.JSON(), nullable=False),
    sa.Column('example_ids', sa.JSON(), nullable=False),
    sa.Column('counts', sa.JSON(), nullable=False),
    sa.Column('datasets', sa.JSON(), nullable=False),
    sa.Column('versions', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('erasures', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_erasures_selector_hash'), ['selector_hash'], unique=False)

    with op.batch_alter_table('examples', schema=None) as batch_op:
        batch_op.add_column(sa.Column('customer', sa.String(length=200), nullable=True))
        batch_op.create_index(batch_op.f('ix_examples_customer'), ['customer'], unique=False)

    with op.batch_alter_table('feedback', schema=None) as batch_op:
        batch_op.add_column(sa.Column('customer', sa.String(length=200), nullable=True))
        batch_op.create_index(batch_op.f('ix_feedback_customer'), ['customer'], unique=False)

    with op.batch_alter_table('interactions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('customer', sa.String(length=200), nullable=True))
        batch_op.create_index(batch_op.f('ix_interactions_customer'), ['customer'], unique=False)

    with op.batch_alter_table('registry_versions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('flags', sa.JSON(), nullable=True))



def downgrade() -> None:
    with op.batch_alter_table('registry_versions', schema=None) as batch_op:
        batch_op.drop_column('flags')

    with op.batch_alter_table('interactions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_interactions_customer'))
        batch_op.drop_column('customer')

    with op.batch_alter_table('feedback', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_feedback_customer'))
        batch_op.drop_column('customer')

    with op.batch_alter_table('examples', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_examples_customer'))
        batch_op.drop_column('customer')

    with op.batch_alter_table('erasures', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_erasures_selector_hash'))

    op.drop_table('erasures')
