"""SIGKILL the serving process at random moments under chat and feedback traffic: nothing acknowledged is lost.

A client thread sends plain and streamed chat requests and feedback (with corrections) back to back and keeps every
interaction and feedback id the server acknowledged (a 200 with the answer, a stream that reached ``[DONE]``, a 201).
The server is killed with SIGKILL after a random delay and started again, several times. Afterwards every
acknowledged row must be in the database (SQLite's ``PRAGMA integrity_check`` must say ok), and each restart must
serve again within seconds. Both run on SQLite and on a real PostgreSQL (``db_url``). ``make test`` runs a few kills
of ``tests.agent.light_server`` (the real app, scripted models); ``make soak`` runs many kills of the real
``affinage serve`` with the tiny model and the real embedder.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from affinage.core.settings import load_settings
from agent.service import auth
from affinage.core.tables import Feedback, Interaction
from affinage.core.store import Store
from affinage.core.database import make_engine
from retrieval.ingest import ingest
from tests.agent.light_server import HashEmbeddings

REPO = Path(__file__).resolve().parents[2]
QUESTIONS = ["How long is the password reset link valid?", "Can I get a refund on an annual plan?",
             "How do I set up Okta single sign-on?", "Are monthly plans refunded?"]
RESTART_LIMIT_S = 30.0  # generous: the machine running the tests is shared


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """One serving process at a time on a fixed port, its output appended to ``HOME/serve.log``."""

    def __init__(self, command: list[str], home: Path):
        self.command, self.home = command, home
        self.url = f"http://127.0.0.1:{command[-1]}"
        self.process: subprocess.Popen | None = None
        self.log = open(home / "serve.log", "ab")

    def start(self) -> float:
        """Start and return the seconds until /healthz answered."""
        begun = time.monotonic()
        self.process = subprocess.Popen(self.command, cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT,
                                        env={**os.environ, "PYTHONPATH": str(REPO)})
        while time.monotonic() - begun < RESTART_LIMIT_S:
            assert self.process.poll() is None, (self.home / "serve.log").read_text()[-3000:]
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return time.monotonic() - begun
            except httpx.TransportError:
                time.sleep(0.05)
        raise AssertionError(f"no answer on /healthz within {RESTART_LIMIT_S} s of a restart")

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        assert self.process.wait(timeout=10) == -signal.SIGKILL

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.kill()
        self.log.close()


@dataclass
class Traffic:
    """What the server acknowledged, and any answer that breaks the rules (a 5xx, a malformed success)."""

    interactions: set[str] = field(default_factory=set)
    feedback: set[str] = field(default_factory=set)
    corrections: dict[str, str] = field(default_factory=dict)
    refused_connections: int = 0
    violations: list[str] = field(default_factory=list)


def chat_once(client: httpx.Client, url: str, key: str, stream: bool, question: str) -> str | None:
    """The acknowledged interaction id, or None when the connection broke before the acknowledgement."""
    body = {"messages": [{"role": "user", "content": question}], "stream": stream}
    headers = {"Authorization": f"Bearer {key}"}
    if not stream:
        response = client.post(url + "/v1/chat/completions", json=body, headers=headers)
        if response.status_code != 200:
            raise AssertionError(f"chat answered {response.status_code}: {response.text[:200]}")
        return response.json()["affinage"]["interaction_id"]
    with client.stream("POST", url + "/v1/chat/completions", json=body, headers=headers) as response:
        if response.status_code != 200:
            raise AssertionError(f"streamed chat answered {response.status_code}")
        events = [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]
    if events[-1:] != ["[DONE]"]:  # cut off by the kill: not acknowledged
        return None
    return json.loads(events[-2])["affinage"]["interaction_id"]


def send_traffic(url: str, key: str, traffic: Traffic, halt: threading.Event, seed: int) -> None:
    rng = random.Random(seed)
    with httpx.Client(timeout=10) as client:
        n = 0
        while not halt.is_set():
            n += 1
            try:
                interaction = chat_once(client, url, key, stream=n % 2 == 0, question=rng.choice(QUESTIONS))
                if interaction is None:
                    continue
                traffic.interactions.add(interaction)
                correction = f"Correction {n}: the link expires after 2 hours." if n % 3 == 0 else None
                response = client.post(url + "/api/feedback", headers={"Authorization": f"Bearer {key}"}, json={
                    "interaction_id": interaction, "rating": "down" if correction else "up", "correction": correction})
                if response.status_code != 201:
                    raise AssertionError(f"feedback answered {response.status_code}: {response.text[:200]}")
                traffic.feedback.add(response.json()["id"])
                if correction:
                    traffic.corrections[response.json()["id"]] = correction
            except (httpx.TransportError, httpx.StreamError, json.JSONDecodeError):
                traffic.refused_connections += 1  # the server is down or was killed mid-answer
                time.sleep(0.05)
            except AssertionError as error:
                traffic.violations.append(str(error))


def workspace(home: Path, kb: Path, database_url: str | None = None, real_models: bool = False,
              tiny_model_dir: Path | None = None) -> str:
    """Ingest the knowledge base with the embedder the server will use; return an agent key. The database is
    ``database_url``, by default the workspace's SQLite file."""
    home.mkdir(parents=True)
    (home / "config.toml").write_text(
        "rate_limit_per_minute = 1000000\nmax_new_tokens = 8\n"
        + (f'database_url = "{database_url}"\n' if database_url else "")
        + (f'chat_model = "{tiny_model_dir}"\n' if real_models else ""))
    settings = load_settings(home)
    if real_models:
        from retrieval.embeddings import SentenceEmbeddings

        embeddings = SentenceEmbeddings()
    else:
        embeddings = HashEmbeddings()
    ingest(settings.index_dir, [kb], embeddings, settings.chunk_chars, settings.chunk_overlap_chars)
    store = Store(settings.db_url)
    key = auth.create_key(store, "soak", "agent")
    store.close()
    return key


def run_soak(home: Path, database_url: str, command: list[str], key: str, kills: int, seed: int) -> None:
    rng = random.Random(seed)
    server = ServerProcess(command, home)
    traffic, halt = Traffic(), threading.Event()
    client = threading.Thread(target=send_traffic, args=(server.url, key, traffic, halt, seed), daemon=True)
    restarts: list[float] = []
    try:
        server.start()
        client.start()
        for _ in range(kills):
            time.sleep(rng.uniform(0.3, 1.5))
            server.kill()
            restarts.append(server.start())
        served = len(traffic.interactions)
        deadline = time.monotonic() + RESTART_LIMIT_S
        while len(traffic.interactions) < served + 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(traffic.interactions) >= served + 3, "the service did not answer again after the last restart"
    finally:
        halt.set()
        client.join(timeout=15)
        server.stop()
    print(f"\nsoak: {kills} kills, {len(traffic.interactions)} interactions and {len(traffic.feedback)} feedback "
          f"acknowledged, {traffic.refused_connections} requests cut off; restart to /healthz: "
          f"max {max(restarts):.1f} s, mean {sum(restarts) / len(restarts):.1f} s")

    assert traffic.violations == []
    assert len(traffic.interactions) >= kills and traffic.feedback
    engine = make_engine(database_url)
    with engine.connect() as connection:
        if engine.dialect.name == "sqlite":
            assert connection.exec_driver_sql("PRAGMA integrity_check").fetchall() == [("ok",)]
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        stored = set(connection.scalars(select(Interaction.id)))
        feedback = dict(connection.execute(select(Feedback.id, Feedback.correction)).all())
    engine.dispose()
    assert traffic.interactions <= stored, f"lost interactions: {sorted(traffic.interactions - stored)}"
    assert traffic.feedback <= set(feedback), f"lost feedback: {sorted(traffic.feedback - set(feedback))}"
    assert all(feedback[i] == text for i, text in traffic.corrections.items())


@pytest.mark.multiprocess
def test_sigkilled_light_server_loses_nothing_acknowledged(tmp_path, kb, db_url):
    home = tmp_path / "home"
    key = workspace(home, kb, db_url, real_models=False, tiny_model_dir=None)
    command = [sys.executable, "-m", "tests.agent.light_server", str(home), str(free_port())]
    run_soak(home, db_url, command, key, kills=int(os.environ.get("AFFINAGE_SOAK_KILLS", "3")), seed=1)


@pytest.mark.soak
def test_sigkilled_affinage_serve_loses_nothing_acknowledged(tmp_path, kb, tiny_model_dir, db_url):
    home = tmp_path / "home"
    key = workspace(home, kb, db_url, real_models=True, tiny_model_dir=tiny_model_dir)
    command = [sys.executable, "-m", "affinage.cli", "--home", str(home), "serve", "--port", str(free_port())]
    run_soak(home, db_url, command, key, kills=int(os.environ.get("AFFINAGE_SOAK_KILLS", "20")), seed=2)


def test_sqlite_runs_in_wal_mode_with_synchronous_full_by_default(home):
    engine = make_engine(load_settings(home).db_url)
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
    engine.dispose()
