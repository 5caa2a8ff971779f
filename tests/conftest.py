"""Shared fixtures: the real embedder, the real default model's tokenizer, a tiny random LM built here, and a fresh
database on SQLite and on a real PostgreSQL server ($AFFINAGE_TEST_POSTGRES_URL, see ``db_url``)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test`'s processes share the cores: one torch thread each, before
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # torch loads (the processes tests spawn inherit it)

import inspect  # noqa: E402
import uuid  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from affinage.core.settings import load_settings  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEMO_KB = REPO / "affinage" / "demo" / "kb"
GOLDEN = REPO / "affinage" / "demo" / "golden.jsonl"
POSTGRES_URL = os.environ.get("AFFINAGE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")

# --- markers: `make test-fast` runs only the tests that carry none of HEAVY ------------------------------------------
# slow: the real default model, training for seconds, or a timed run; browser: Playwright and Chromium; multiprocess:
# spawns processes; postgres: the PostgreSQL server. The ones that follow from a fixture are set here, centrally; the
# rest are `pytestmark` lines or decorators in the test files. The terminal summary names unmarked slow tests.
HEAVY = ("slow", "browser", "multiprocess", "postgres")
UNMARKED_SLOW_SECONDS = 3.0


def heavy_markers(item) -> set[str]:
    """The markers ``item`` gets from what it uses: a browser, the PostgreSQL database, the real default model."""
    found = set()
    if "browser" in item.fixturenames:  # also through `page`
        found.add("browser")
    callspec = getattr(item, "callspec", None)
    if callspec is not None and callspec.params.get("db_url") == "postgresql":  # also through fixtures on db_url
        found.add("postgres")
    function = getattr(item, "obj", None)
    if item.get_closest_marker("integration") or (
            callable(function) and "default_model_dir" in inspect.signature(function).parameters):
        found.add("slow")  # the tiny model only borrows the default model's tokenizer; these run the model itself
    return found


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects
def pytest_collection_modifyitems(config, items):
    for item in items:
        for name in sorted(heavy_markers(item)):
            if not item.get_closest_marker(name):
                item.add_marker(name)
        if not any(item.get_closest_marker(name) for name in HEAVY + ("soak",)):
            _unmarked.add(item.nodeid)


_unmarked: set[str] = set()
_unmarked_slow: dict[str, float] = {}


def pytest_runtest_logreport(report):
    # the call alone: a session fixture's setup is paid by whichever test comes first
    if report.when == "call" and report.nodeid in _unmarked and report.duration > UNMARKED_SLOW_SECONDS:
        _unmarked_slow[report.nodeid] = report.duration


def pytest_terminal_summary(terminalreporter):
    if _unmarked_slow:
        terminalreporter.section(f"unmarked tests whose call took over {UNMARKED_SLOW_SECONDS:.0f} s: mark them "
                                 f"({', '.join(HEAVY)}) or `make test-fast` slows down")
        for nodeid, seconds in sorted(_unmarked_slow.items(), key=lambda pair: -pair[1]):
            terminalreporter.write_line(f"{seconds:6.1f}s {nodeid}")


@pytest.fixture(scope="session")
def embeddings():
    from retrieval.embeddings import SentenceEmbeddings

    return SentenceEmbeddings()


@pytest.fixture(scope="session")
def default_model_dir(tmp_path_factory) -> Path:
    """The embedded SmolLM2 converted from its GGUF, once per test session."""
    from affinage.core.model_files import resolve_model_path

    settings = load_settings(tmp_path_factory.mktemp("default-home"))
    return Path(resolve_model_path(settings))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, default_model_dir) -> Path:
    """A randomly initialised 2-layer Llama with the default model's tokenizer and chat template."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(default_model_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True,
    )
    target = tmp_path_factory.mktemp("tiny-model")
    LlamaForCausalLM(config).save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


@pytest.fixture
def home(tmp_path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def tiny_settings(home, tiny_model_dir):
    return load_settings(home, chat_model=str(tiny_model_dir), max_new_tokens=8)


@pytest.fixture
def kb(tmp_path) -> Path:
    """A three-page knowledge base small enough to reason about."""
    root = tmp_path / "kb"
    (root / "billing").mkdir(parents=True)
    (root / "billing" / "refunds.md").write_text(
        "# Refunds\n\n## Annual plan refunds\n\nAnnual plans are refundable within 30 days of purchase. "
        "Open Settings > Billing and press Request refund.\n\n## Monthly plans\n\nMonthly plans are not refunded.\n"
    )
    (root / "account").mkdir()
    (root / "account" / "passwords.md").write_text(
        "# Passwords\n\n## Reset your password\n\nClick Forgot password on the sign-in page; the reset link "
        "expires after 2 hours.\n"
    )
    (root / "sso.html").write_text(
        "<html><head><title>Single sign-on</title></head><body><h1>Single sign-on</h1>"
        "<h2 id='okta-setup'>Set up Okta</h2><p>Paste the metadata URL into Settings &gt; Security.</p></body></html>"
    )
    return root


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """The URL of a fresh, empty database: a SQLite file, or a new database on the PostgreSQL server at
    ``POSTGRES_URL`` (created with a random name, dropped afterwards). An unreachable server fails the test."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'affinage.db'}"
        return
    from sqlalchemy.exc import OperationalError

    from affinage.core.database import make_engine

    server = make_engine(POSTGRES_URL).execution_options(isolation_level="AUTOCOMMIT")
    name = f"affinage_test_{uuid.uuid4().hex[:12]}"
    unreachable = None
    try:
        with server.connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except OperationalError as error:
        unreachable = " ".join(str(error.orig).split())
    if unreachable:
        server.dispose()
        pytest.fail(f"PostgreSQL is not reachable at {server.url} ({unreachable}): run `bash scripts/start-postgres.sh`"
                    " (make test does), or set AFFINAGE_TEST_POSTGRES_URL to a role that may create databases",
                    pytrace=False)
    try:
        yield server.url.set(database=name).render_as_string(hide_password=False)
    finally:
        with server.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE "{name}" WITH (FORCE)')
        server.dispose()
