"""The model registry's metadata (tuning.registry): versions, the active pointer and the audit log.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21 14:07:51.150962
"""

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('registry_events',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('action', sa.String(length=32), nullable=False),
    sa.Column('version', sa.String(length=200), nullable=False),
    sa.Column('actor', sa.String(length=200), nullable=False),
    sa.Column('details', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('registry_events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_registry_events_at'), ['at'], unique=False)
        batch_op.create_index(batch_op.f('ix_registry_events_version'), ['version'], unique=False)

    op.create_table('registry_versions',
    sa.Column('id', sa.String(length=200), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('gate', sa.JSON(), nullable=True),
    sa.Column('manifest', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('registry_versions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_registry_versions_created_at'), ['created_at'], unique=False)

    op.create_table('registry_pointer',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('active', sa.String(length=200), nullable=True),
    sa.Column('history', sa.JSON(), nullable=False),
    sa.Column('ever_active', sa.JSON(), nullable=False),
    sa.Column('generation', sa.Integer(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['active'], ['registry_versions.id'], ),
    sa.PrimaryKeyConstraint('id')
    )


def downgrade() -> None:
    op.drop_table('registry_pointer')
    with op.batch_alter_table('registry_versions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_registry_versions_created_at'))

    op.drop_table('registry_versions')
    with op.batch_alter_table('registry_events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_registry_events_version'))
        batch_op.drop_index(batch_op.f('ix_registry_events_at'))

    op.drop_table('registry_events')
