"""Engines set up for durability, and the one write lock that SQLite and PostgreSQL share."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from sqlalchemy import create_engine, event, make_url
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

BUSY_TIMEOUT_S = 10.0


def use_wal(cursor: sqlite3.Cursor, timeout_s: float = BUSY_TIMEOUT_S) -> None:
    """Switch the file to WAL, retrying while another process holds it. Turning a new file to WAL needs an exclusive
    lock, and SQLite answers "database is locked" at once there instead of waiting in its busy handler, so processes
    that open one new database together (``accelerate launch`` ranks, replicas) would fail without the retry."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() >= deadline:
                raise
            time.sleep(0.05)


def make_engine(url: str) -> Engine:
    """An engine set up for durability: SQLite in WAL mode with synchronous=FULL and foreign keys on; PostgreSQL
    through psycopg 3 (``postgresql://`` URLs too), sessions in UTC, connections checked before use."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    backend = parsed.get_backend_name()
    if backend == "postgresql":
        return create_engine(parsed, pool_pre_ping=True, connect_args={"options": "-c timezone=UTC"})
    if backend != "sqlite":
        return create_engine(parsed)
    if parsed.database:
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(parsed, connect_args={"check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection, _record) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
        use_wal(cursor)
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA secure_delete=ON")  # deleted rows are zeroed in the file, not left in free space
        cursor.close()

    return engine


def lock_for_writing(session: Session, table: str | None = None) -> None:
    """Hold off other writers until the session's transaction ends, so a read-then-write in it cannot race another:
    SQLite's write lock (``BEGIN IMMEDIATE``, before any read), and on PostgreSQL ``table`` locked in a mode that
    conflicts with itself and with inserts (rows already locked by the caller's statements need no table lock)."""
    connection = session.connection()
    if connection.dialect.name == "sqlite":
        connection.exec_driver_sql("BEGIN IMMEDIATE")
    elif connection.dialect.name == "postgresql" and table is not None:
        connection.exec_driver_sql(f'LOCK TABLE "{table}" IN SHARE ROW EXCLUSIVE MODE')
