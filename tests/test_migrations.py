"""Alembic migrations on SQLite and a real PostgreSQL: the migrated schema is exactly the models (so a model changed
without a revision fails here), a database the old create_all made is stamped and keeps its rows, one a newer
release migrated is refused, replicas starting at once migrate it once, and the administrator's `affinage db`
commands."""

import subprocess
import sys
import time

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, select

from affinage.cli import main
from affinage.core import migrations
from affinage.core.tables import Base, Interaction
from affinage.core.store import Store
from affinage.core.database import make_engine
from affinage.core.timeutil import utcnow
from tests.conftest import REPO

LEGACY = ["interactions", "examples", "feedback", "jobs", "job_logs", "api_keys"]  # what create_all made before


def schema_differences(store: Store) -> list:
    with store.engine.connect() as connection:
        return compare_metadata(MigrationContext.configure(connection, opts={"compare_type": True}), Base.metadata)


def revision(store: Store) -> str | None:
    with store.engine.connect() as connection:
        return migrations.current(connection)


def test_the_migrated_schema_is_exactly_the_models(db_url):
    store = Store(db_url)
    assert revision(store) == migrations.head()
    assert schema_differences(store) == [], "a model changed without a revision: python -m affinage.core.migrations MESSAGE"
    store.close()


def test_a_database_from_before_migrations_is_stamped_and_keeps_its_rows(db_url):
    engine = make_engine(db_url)
    with engine.begin() as connection:  # the tables as the old create_all made them: revision 0001, unstamped
        command.upgrade(migrations.config(connection), migrations.INITIAL)
        connection.exec_driver_sql("DROP TABLE alembic_version")
    assert sorted(inspect(engine).get_table_names()) == sorted(LEGACY)
    with engine.begin() as connection:
        connection.execute(Interaction.__table__.insert().values(
            id="kept", created_at=utcnow(), question="q", answer="a", retrieved=[], citations=[],
            examples=[], abstained=False, signals=[], prompt_version="p", model_version="m", latency_s=0.1,
            channel="api"))
    engine.dispose()

    store = Store(db_url)
    assert revision(store) == migrations.head() and schema_differences(store) == []
    assert set(Base.metadata.tables) <= set(inspect(store.engine).get_table_names())
    with store.session() as session:
        assert session.scalars(select(Interaction.id)).all() == ["kept"]
    store.close()


def test_a_database_migrated_by_a_newer_release_is_refused_with_the_reason(db_url, monkeypatch, tmp_path, capsys):
    Store(db_url).close()
    engine = make_engine(db_url)
    with engine.begin() as connection:
        connection.exec_driver_sql("UPDATE alembic_version SET version_num = '9999'")
    engine.dispose()
    with pytest.raises(migrations.NewerSchema, match="schema revision 9999, which this affinage does not know"):
        Store(db_url)
    monkeypatch.setenv("AFFINAGE_DATABASE_URL", db_url)
    assert main(["--home", str(tmp_path), "db", "upgrade"]) == 1
    assert "run the newer affinage that migrated it" in capsys.readouterr().err
    assert main(["--home", str(tmp_path), "db", "current"]) == 1  # never "run affinage db upgrade"
    assert "newer than this affinage knows (its newest is" in capsys.readouterr().err


@pytest.mark.multiprocess
def test_replicas_starting_at_once_migrate_the_database_once(db_url):
    start_at = time.time() + 4  # after every process has imported what it needs: they open the store together
    code = ("import sys, time; from affinage.core.store import Store; time.sleep(max(0.0, float(sys.argv[2]) - time.time())); "
            "Store(sys.argv[1]).close()")
    replicas = [subprocess.Popen([sys.executable, "-c", code, db_url, str(start_at)], cwd=REPO, stderr=subprocess.PIPE,
                                 text=True) for _ in range(4)]
    outcomes = [(replica.communicate(timeout=120)[1], replica.returncode) for replica in replicas]
    assert [stderr for stderr, returncode in outcomes if returncode] == []
    store = Store(db_url)
    assert revision(store) == migrations.head() and schema_differences(store) == []
    store.close()


def test_db_commands_show_and_upgrade_the_revision(db_url, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("AFFINAGE_DATABASE_URL", db_url)
    home = str(tmp_path / "home")
    assert main(["--home", home, "db", "current"]) == 0
    assert capsys.readouterr().out.startswith(f"none (head is {migrations.head()}: run `affinage db upgrade`")
    assert main(["--home", home, "db", "upgrade"]) == 0
    assert capsys.readouterr().out == f"upgraded empty -> {migrations.head()}\n"
    assert main(["--home", home, "db", "upgrade"]) == 0
    assert main(["--home", home, "db", "current"]) == 0
    assert capsys.readouterr().out == f"{migrations.head()} (head)\n" * 2


@pytest.mark.parametrize("url", ["postgresql+psycopg://nobody@127.0.0.1:1/none", "nosuchdb://x"])
def test_db_commands_name_an_unusable_database_in_one_line(url, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("AFFINAGE_DATABASE_URL", url)
    assert main(["--home", str(tmp_path), "db", "current"]) == 1
    error = capsys.readouterr().err
    assert error.startswith("affinage: error: database: ") and error.count("\n") == 1
