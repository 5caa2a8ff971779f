"""Alembic's entry point, run by ``affinage.core.migrations``: always on the connection it hands over, never from an .ini."""

from alembic import context

from affinage.core.tables import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True, compare_type=True)
with context.begin_transaction():
    context.run_migrations()
