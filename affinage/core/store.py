"""The database as the pieces use it: SQLite (WAL) by default, PostgreSQL by URL setting, its schema brought to
head by Alembic on opening."""

from __future__ import annotations

import functools
import time
from contextlib import contextmanager
from typing import Iterator

from sqlalchemy.orm import Session, sessionmaker

from affinage.core import migrations
from affinage.core.database import make_engine
from affinage.core.tables import Base, Interaction


class Store:
    """Owns the engine and hands out transactional sessions; the schema is brought to head on opening."""

    def __init__(self, url: str):
        self.engine = make_engine(url)
        migrations.upgrade(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A transaction: committed when the block ends, rolled back if it raises."""
        with self._sessions.begin() as session:
            yield session

    def add(self, row: Base) -> Base:
        with self.session() as session:
            session.add(row)
        return row

    def get_interaction(self, interaction_id: str) -> Interaction | None:
        with self.session() as session:
            return session.get(Interaction, interaction_id)

    def purge_deleted(self, attempts: int = 50) -> bool:
        """Make rows deleted so far unrecoverable from SQLite's files, as an erasure needs: ``secure_delete`` zeroes
        them in the pages, and a truncating checkpoint empties the WAL, which still holds the pages as they were.
        The checkpoint waits out readers for a while; False if one kept it from finishing. PostgreSQL keeps dead
        rows in its own files until VACUUM (FULL) reuses or rewrites them: docs/administrators.md, *Forgetting a customer*."""
        if self.engine.dialect.name != "sqlite":
            return True
        for _ in range(attempts):
            with self.engine.connect() as connection:
                busy = connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)").first()[0]
            if not busy:
                return True
            time.sleep(0.1)
        return False

    def close(self) -> None:
        self.engine.dispose()


@functools.cache
def shared_store(url: str) -> Store:
    """One Store per database URL in this process, for code that opens the database on demand (the worker's cycle
    stages, the gates, training): each Store is an engine with its own connection pool and a migration check."""
    return Store(url)
