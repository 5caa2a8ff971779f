"""The races an outside probe found, driven for a bounded time against the real app under uvicorn: parallel
reviews of one correction (approvals against rejections), parallel creations of one key name, feedback on someone
else's interaction, and requests with made-up HTTP methods. Afterwards: no 5xx, no duplicated rows, one winner per
race, and /metrics under a fixed size.

``make soak`` runs it for ``AFFINAGE_RACE_SOAK_SECONDS`` (default 60) on SQLite and PostgreSQL; ``make test`` runs a
few seconds of it on SQLite so the soak itself cannot rot.
"""

from __future__ import annotations

import os
import random
import string
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from sqlalchemy import func, select

from affinage.factory import build_agent
from agent.service import auth
from affinage.service import create_app
from affinage.core.tables import ApiKey, Example, Feedback
from retrieval.ingest import ingest
from tests.agent.conftest import bearer
from tests.agent.service_harness import LiveServer

METRICS_LIMIT_BYTES = 64_000
WORKERS = 8


def drive(base_url: str, keys: dict[str, str], seconds: float, seed: int) -> dict:
    """Rounds of racing requests until ``seconds`` have passed; returns what each race answered."""
    rng = random.Random(seed)
    statuses: Counter[int] = Counter()
    reviews: dict[str, list[tuple[str, int]]] = {}
    key_names: dict[str, list[int]] = {}
    deadline = time.monotonic() + seconds
    with httpx.Client(base_url=base_url, timeout=60) as client, ThreadPoolExecutor(WORKERS) as pool:
        def call(method: str, path: str, key: str | None = None, **kwargs) -> httpx.Response:
            response = client.request(method, path, headers=bearer(key) if key else {}, **kwargs)
            statuses[response.status_code] += 1
            return response

        round_no = 0
        while time.monotonic() < deadline:
            round_no += 1
            answer = call("POST", "/v1/chat/completions", keys["ann"], json={
                "messages": [{"role": "user", "content": f"How long is the reset link valid? ({round_no})"}]})
            assert answer.status_code == 200, answer.text
            interaction_id = answer.json()["affinage"]["interaction_id"]
            body = {"interaction_id": interaction_id, "rating": "down", "correction": f"Two hours ({round_no})."}
            assert call("POST", "/api/feedback", keys["ann"], json=body).status_code == 201
            pending = call("GET", "/api/operator/corrections", keys["operator"]).json()
            feedback_id = next(c["id"] for c in pending if c["interaction_id"] == interaction_id)

            decisions = ["approve", "reject"] * 3
            rng.shuffle(decisions)
            name = f"race-{round_no}"
            jobs = [(d, pool.submit(call, "POST", f"/api/operator/corrections/{feedback_id}/{d}", keys["operator"]))
                    for d in decisions]
            creations = [pool.submit(call, "POST", "/api/admin/keys", keys["admin"],
                                     json={"name": name, "role": "agent"}) for _ in range(4)]
            intrusions = [pool.submit(call, "POST", "/api/feedback", keys["bob"], json={**body, "correction": "evil"})
                          for _ in range(2)]
            methods = ["".join(rng.choices(string.ascii_uppercase, k=rng.randint(8, 2000))) for _ in range(4)]
            noise = [pool.submit(call, m, "/healthz") for m in methods]
            reviews[feedback_id] = [(d, job.result().status_code) for d, job in jobs]
            key_names[name] = [job.result().status_code for job in creations]
            assert {job.result().status_code for job in intrusions} == {403}
            assert {job.result().status_code for job in noise} <= {404, 405}
        metrics_size = len(call("GET", "/metrics", keys["operator"]).content)
    return {"statuses": statuses, "reviews": reviews, "key_names": key_names, "metrics_size": metrics_size,
            "rounds": round_no}


def run_race_soak(settings, kb, embeddings, seconds: float, seed: int) -> None:
    ingest(settings.index_dir, [kb], embeddings, settings.chunk_chars, settings.chunk_overlap_chars)
    llm = FakeListChatModel(responses=["The reset link expires after 2 hours [1]."])
    agent = build_agent(settings, llm=llm, embeddings=embeddings)
    store = agent.store
    keys = {name: auth.create_key(store, name, role)
            for name, role in (("ann", "agent"), ("bob", "agent"), ("operator", "operator"), ("admin", "admin"))}
    with LiveServer(create_app(settings, agent=agent)) as server:
        seen = drive(server.url, keys, seconds, seed)

    print(f"\nrace soak: {seen['rounds']} rounds in {seconds:.0f} s, answers {dict(sorted(seen['statuses'].items()))}, "
          f"/metrics {seen['metrics_size']} bytes")
    assert seen["rounds"] >= 1
    assert not [status for status in seen["statuses"] if status >= 500]
    assert seen["metrics_size"] < METRICS_LIMIT_BYTES
    with store.session() as session:
        examples = Counter(session.scalars(select(Example.interaction_id).where(Example.origin == "correction")))
        for feedback_id, answers in seen["reviews"].items():
            winners = [decision for decision, status in answers if status == 200]
            assert len(winners) == 1 and Counter(status for _, status in answers)[409] == 5, answers
            row = session.get(Feedback, feedback_id)
            assert row.review == ("approved" if winners[0] == "approve" else "rejected")
            assert examples[row.interaction_id] == (1 if winners[0] == "approve" else 0)
        for name, answers in seen["key_names"].items():
            assert sorted(answers) == [201, 409, 409, 409], (name, answers)
            assert session.scalar(select(func.count()).select_from(ApiKey).where(ApiKey.name == name)) == 1
        assert session.scalar(select(func.count()).select_from(Feedback).where(Feedback.user == "bob")) == 0


def race_settings(tiny_settings, **overrides):
    """Limits high enough that the soak measures races, not the rate limiter."""
    return tiny_settings.model_copy(update={"rate_limit_per_minute": 100_000, "feedback_per_minute": 100_000,
                                            **overrides})


@pytest.mark.slow
def test_races_stay_single_for_a_few_seconds(tiny_settings, kb, embeddings):
    run_race_soak(race_settings(tiny_settings), kb, embeddings, seconds=3, seed=1)


@pytest.mark.soak
def test_race_soak(tiny_settings, db_url, kb, embeddings):
    seconds = float(os.environ.get("AFFINAGE_RACE_SOAK_SECONDS", "60"))
    run_race_soak(race_settings(tiny_settings, database_url=db_url), kb, embeddings, seconds=seconds, seed=2)
