"""The durable job queue on SQLite and on a real PostgreSQL (``db_url``): one cycle at a time, atomic claims, leases
that expire and move, a bounded log, and the operator's jobs routes."""

import threading
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from affinage.core.tables import Job
from affinage.core.store import Store
from affinage.core.timeutil import utcnow
from tuning import jobs


@pytest.fixture
def store(db_url):
    store = Store(db_url)
    yield store
    store.close()


def test_one_job_of_a_kind_is_queued_or_running_at_a_time(store):
    first = jobs.enqueue(store, "cycle", "test", max_attempts=3)
    assert first and jobs.enqueue(store, "cycle", "again", max_attempts=3) is None
    assert jobs.busy(store, "cycle") and not jobs.busy(store, "other")
    claimed = jobs.claim(store, "w1", lease_s=60)
    assert claimed.id == first.id and claimed.state == "running" and claimed.attempts == 1
    assert jobs.enqueue(store, "cycle", "while running", max_attempts=3) is None
    jobs.finish(store, first.id, "w1", outputs={"outcome": "done"})
    assert jobs.get(store, first.id).state == "succeeded" and not jobs.busy(store, "cycle")
    assert jobs.enqueue(store, "cycle", "next", max_attempts=3) is not None


def test_racing_workers_claim_a_job_exactly_once(db_url):
    job = jobs.enqueue(Store(db_url), "cycle", "race", max_attempts=3)
    stores = [Store(db_url) for _ in range(8)]  # one engine each: separate connections, as separate workers have
    barrier, winners = threading.Barrier(len(stores)), []

    def contend(n: int) -> None:
        barrier.wait()
        if jobs.claim(stores[n], f"w{n}", lease_s=60):
            winners.append(n)

    threads = [threading.Thread(target=contend, args=(n,)) for n in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1
    final = jobs.get(stores[0], job.id)
    assert final.attempts == 1 and final.lease_owner == f"w{winners[0]}"
    for store in stores:
        store.close()


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_claim_skips_a_job_whose_row_another_claim_holds(store):
    first = jobs.enqueue(store, "cycle", "older", max_attempts=3)
    second = jobs.enqueue(store, "other", "newer", max_attempts=3)
    taken = []
    with store.engine.begin() as connection:  # another worker's claim, between its SELECT and its COMMIT
        connection.execute(select(Job.id).where(Job.id == first.id).with_for_update())
        claimer = threading.Thread(target=lambda: taken.append(jobs.claim(store, "w2", lease_s=60)), daemon=True)
        claimer.start()
        claimer.join(timeout=60)
        assert not claimer.is_alive(), "the claim waited on the locked row instead of skipping it"
    assert taken[0].id == second.id and jobs.get(store, first.id).state == "queued"


def test_an_expired_lease_moves_the_job_and_fences_off_its_old_owner(store):
    job = jobs.enqueue(store, "cycle", "t", max_attempts=3)
    jobs.claim(store, "dead", lease_s=60)
    assert jobs.claim(store, "other", lease_s=60) is None  # a live lease is respected
    assert jobs.heartbeat(store, job.id, "dead", lease_s=60)

    later = utcnow() + timedelta(seconds=61)
    taken = jobs.claim(store, "other", lease_s=60, now=later)
    assert taken.lease_owner == "other" and taken.attempts == 2
    assert taken.lease_expires == later + timedelta(seconds=60)  # aware UTC from either database
    assert jobs.info(taken)["lease_expires"].endswith("+00:00")
    assert not jobs.heartbeat(store, job.id, "dead", lease_s=60)
    with pytest.raises(jobs.LeaseLost):
        jobs.save(store, job.id, "dead", stage="train")
    jobs.save(store, job.id, "other", stage="train", outputs={"synth": {"dataset": "ds-1"}})
    assert jobs.get(store, job.id).outputs == {"synth": {"dataset": "ds-1"}}


def test_a_job_whose_workers_keep_dying_fails_with_the_reason(store):
    job = jobs.enqueue(store, "cycle", "t", max_attempts=2)
    now = utcnow()
    for attempt in range(2):
        now += timedelta(seconds=61)
        assert jobs.claim(store, f"w{attempt}", lease_s=60, now=now).attempts == attempt + 1
    assert jobs.claim(store, "w2", lease_s=60, now=now + timedelta(seconds=61)) is None
    failed = jobs.get(store, job.id)
    assert failed.state == "failed" and "lease expired" in failed.error and not jobs.busy(store, "cycle")


def test_release_on_shutdown_requeues_without_counting_the_attempt(store):
    job = jobs.enqueue(store, "cycle", "t", max_attempts=1)
    jobs.claim(store, "w1", lease_s=60)
    assert jobs.release(store, job.id, "w1")
    back = jobs.get(store, job.id)
    assert back.state == "queued" and back.attempts == 0 and back.lease_owner is None
    assert jobs.claim(store, "w2", lease_s=60).attempts == 1


def test_the_log_keeps_the_newest_lines(store, monkeypatch):
    monkeypatch.setattr(jobs, "LOG_LINES", 5)
    job = jobs.enqueue(store, "cycle", "t", max_attempts=1)
    for n in range(12):
        jobs.log(store, job.id, f"line {n} " + "x" * 3000)
    lines = jobs.log_lines(store, job.id)
    assert [line["message"].split()[1] for line in lines] == ["7", "8", "9", "10", "11"]
    assert all(len(line["message"]) == jobs.LOG_CHARS for line in lines)
    with pytest.raises(jobs.UnknownJob, match="no job 'nope'"):
        jobs.log_lines(store, "nope")


def test_operator_lists_jobs_and_reads_a_log_and_agents_may_not(tiny_settings, embeddings):
    from fastapi.testclient import TestClient

    from affinage.factory import build_agent
    from affinage.service import create_app
    from agent.service.auth import create_key

    agent = build_agent(tiny_settings, embeddings=embeddings)
    keys = {role: create_key(agent.store, f"test-{role}", role) for role in ("agent", "operator")}
    job = jobs.enqueue(agent.store, "cycle", "12 new failures", max_attempts=3)
    jobs.claim(agent.store, "w1", lease_s=60)
    jobs.save(agent.store, job.id, "w1", stage="train", progress=0.5,
              outputs={"synth": {"dataset": "ds-1"}, "train": {"candidate": "sft-1"}})
    jobs.log(agent.store, job.id, "<b>train</b> (4/6)")
    older = jobs.enqueue(agent.store, "other", "yesterday", max_attempts=1)
    with agent.store.session() as session:
        session.execute(update(Job).where(Job.id == older.id).values(created_at=utcnow() - timedelta(days=1)))

    with TestClient(create_app(tiny_settings, agent=agent)) as client:
        operator = {"Authorization": f"Bearer {keys['operator']}"}
        listed = client.get("/api/operator/jobs", headers=operator).json()
        assert [j["id"] for j in listed] == [job.id, older.id]
        row = listed[0]
        assert (row["state"], row["stage"], row["progress"], row["attempts"]) == ("running", "train", 0.5, 1)
        assert (row["dataset"], row["candidate"], row["trigger"]) == ("ds-1", "sft-1", "12 new failures")
        lines = client.get(f"/api/operator/jobs/{job.id}/log", headers=operator).json()
        assert lines["id"] == job.id and lines["lines"][-1]["message"] == "<b>train</b> (4/6)"
        missing = client.get("/api/operator/jobs/nope/log", headers=operator)
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "job_not_found"
        for path in ("/api/operator/jobs", f"/api/operator/jobs/{job.id}/log"):
            response = client.get(path, headers={"Authorization": f"Bearer {keys['agent']}"})
            assert response.status_code == 403 and response.json()["error"]["type"] == "permission_error"
