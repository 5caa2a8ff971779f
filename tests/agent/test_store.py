"""The store on SQLite and on a real PostgreSQL (``db_url``): rows round-trip with their JSON and their times in UTC,
feedback refreshes its interaction's signals, a transaction that raises keeps nothing, foreign keys hold, and a
PostgreSQL URL of either spelling reaches psycopg 3 with sessions in UTC; processes that open one new SQLite file at
the same moment all get WAL mode and write."""

import multiprocessing

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from agent.feedback import record_feedback
from affinage.core.tables import Feedback, Interaction
from affinage.core.store import Store
from affinage.core.database import make_engine
from affinage.core.timeutil import utcnow

RETRIEVED = [{"chunk_id": "c1", "source": "billing/invoices.md#vat", "score": 0.71}]


@pytest.fixture
def store(db_url):
    store = Store(db_url)
    yield store
    store.close()


def interaction(**values) -> Interaction:
    return Interaction(**{"question": "Où est ma facture ? 💳", "answer": "Settings > Billing.", "retrieved": RETRIEVED,
                          "prompt_version": "p1", "model_version": "m1", "latency_s": 0.2, "user": "ann", **values})


def test_rows_round_trip_with_their_json_and_utc_times(store):
    before = utcnow()
    row = store.add(interaction())
    fed = record_feedback(store, row.id, "down", correction="Open Settings > Billing > Invoices.", user="ann")
    got = store.get_interaction(row.id)
    assert (got.question, got.retrieved, got.abstained) == ("Où est ma facture ? 💳", RETRIEVED, False)
    assert before <= got.created_at <= utcnow() and got.created_at.tzinfo is not None  # aware UTC from either database
    assert {signal["kind"] for signal in got.signals} >= {"thumbs_down", "correction_submitted"}
    with store.session() as session:
        assert session.get(Feedback, fed.id).correction == "Open Settings > Billing > Invoices."


def test_a_transaction_that_raises_keeps_nothing(store):
    with pytest.raises(RuntimeError), store.session() as session:
        session.add(interaction())
        session.flush()
        raise RuntimeError("the request failed after the write")
    with store.session() as session:
        assert session.scalar(select(func.count()).select_from(Interaction)) == 0


def test_feedback_on_a_missing_interaction_is_refused_by_the_database(store):
    with pytest.raises(IntegrityError), store.session() as session:
        session.add(Feedback(interaction_id="nope", rating="up"))


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_postgresql_url_of_either_spelling_uses_psycopg_in_utc(db_url):
    for url in (db_url, db_url.replace("postgresql+psycopg://", "postgresql://")):
        engine = make_engine(url)
        with engine.connect() as connection:
            assert connection.exec_driver_sql("SHOW timezone").scalar() == "UTC"
        assert engine.url.drivername == "postgresql+psycopg"
        engine.dispose()


def open_and_write(path: str, start) -> str:
    """One process: open the file as the service does, the moment every other process does, and write a row."""
    start.wait()
    engine = make_engine(f"sqlite:///{path}")
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql("CREATE TABLE IF NOT EXISTS t (x INTEGER)")
            connection.exec_driver_sql("INSERT INTO t VALUES (1)")
            return connection.exec_driver_sql("PRAGMA journal_mode").scalar()
    except Exception as error:  # noqa: BLE001 - the parent asserts on what each process saw
        return repr(error)
    finally:
        engine.dispose()


@pytest.mark.multiprocess
def test_processes_opening_one_new_sqlite_file_together_all_get_wal_and_write(tmp_path):
    """Turning a new file to WAL needs an exclusive lock that SQLite refuses at once rather than waiting for; before
    the retry, about one start in four of four processes failed with "database is locked" (two ``accelerate`` ranks
    opening the registry hit it in CI)."""
    processes, starts = 4, 25
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager, context.Pool(processes) as pool:
        for start in range(starts):
            path = str(tmp_path / f"new-{start}.sqlite")
            results = pool.starmap(open_and_write, [(path, manager.Barrier(processes))] * processes)
            assert results == ["wal"] * processes, results
            engine = make_engine(f"sqlite:///{path}")
            with engine.connect() as connection:
                assert connection.exec_driver_sql("SELECT count(*) FROM t").scalar() == processes
            engine.dispose()
