"""The worker on the tiny model: triggers, a cycle end to end, a worker stopped and one killed mid-training
followed by one that finishes the job (on SQLite and on PostgreSQL), the table never showing two running copies,
and the promotion policy."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import select, update

from affinage.core.settings import load_settings
from agent.feedback import record_feedback
from affinage.core.tables import Interaction, Job
from affinage.core.store import Store
from retrieval.ingest import ingest
from tests.conftest import REPO
from tuning import jobs
from tuning.checks import improves, no_worse, not_higher
from tuning.decisions import passes_by_margin
from tuning.registry import Registry
from tuning.report import write_report
from affinage.worker import STAGES, Worker, due

FAILURES = [("ann", "Can I still get my money back on the yearly plan after three weeks?",
             "Yes: annual plans are refundable within 30 days of purchase."),
            ("bob", "My password reset email link stopped working, why?", "The reset link expires after 2 hours."),
            ("cid", "Where do I put the Okta metadata URL?", "Paste the metadata URL into Settings > Security.")]


@pytest.fixture
def workspace(request, tiny_settings, tiny_model_dir, kb, embeddings, quick_config, tmp_path):
    """A workspace with an index, three corrected failures and a config.toml that every worker process reads; the
    worker's search trains one candidate of eight steps with a checkpoint every two (``quick_config`` may rewrite
    that run config) at the run config's learning rate. Its database is the test's ``db_url`` when the test asks for
    one, else the workspace's SQLite file."""
    golden = tmp_path / "golden.jsonl"
    golden.write_text(json.dumps({"question": "How long is a password reset link valid?", "answer": "2 hours.",
                                  "source": "account/passwords.md#reset-your-password"}) + "\n")
    run = quick_config(max_steps=8)
    space = tmp_path / "space.toml"
    space.write_text("learning_rate = {choices = [1e-2, 3e-3]}\n")
    home = tiny_settings.home
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(
        f'chat_model = "{tiny_model_dir}"\nmax_new_tokens = 8\ngolden_set = "{golden}"\ndrift_permutations = 20\n'
        f'paraphrases = 1\nworker_min_failures = 3\nworker_drift_check_seconds = 0\nworker_lease_seconds = 3\n'
        f'worker_poll_seconds = 0.5\nworker_train_config = "{run}"\nsearch_space = "{space}"\n'
        f'search_candidates = 1\nsearch_trial_minutes = 1\n'
        + (f'database_url = "{request.getfixturevalue("db_url")}"\n' if "db_url" in request.fixturenames else ""))
    settings = load_settings(home)
    ingest(settings.index_dir, [kb], embeddings, settings.chunk_chars, settings.chunk_overlap_chars)
    store = Store(settings.db_url)
    for user, question, correction in FAILURES:
        interaction = store.add(Interaction(question=question, answer="I don't know.", prompt_version="t",
                                            model_version="t", latency_s=0.1, user=user))
        record_feedback(store, interaction.id, "down", correction=correction, user=user)
    return settings


class Sampler(threading.Thread):
    """Reads the job table every few milliseconds; records the most running rows and live cycles it ever saw."""

    def __init__(self, settings):
        super().__init__(daemon=True)
        self.store, self.most_running, self.most_live, self.samples = Store(settings.db_url), 0, 0, 0
        self.done = threading.Event()

    def run(self):
        while not self.done.wait(0.02):
            with self.store.session() as session:
                rows = session.execute(select(Job.state, Job.singleton)).all()
            self.most_running = max(self.most_running, sum(state == "running" for state, _ in rows))
            self.most_live = max(self.most_live, sum(singleton is not None for _, singleton in rows))
            self.samples += 1

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *_):
        self.done.set()
        self.join()


def test_triggers_fire_on_failures_drift_and_schedule(tmp_path):
    now = datetime(2026, 3, 1, tzinfo=timezone.utc)
    s = load_settings(tmp_path, worker_min_failures=20, drift_window_days=7)
    assert due(s, now, None, 20, False).startswith("20 new failures")
    assert due(s, now, now - timedelta(hours=1), 19, False) is None
    assert due(s, now, now - timedelta(days=8), 0, True).startswith("input drift")
    assert due(s, now, now - timedelta(days=6), 0, True) is None  # a cycle within the drift window saw it
    assert due(s, now, now - timedelta(days=30), 0, False) is None  # the schedule is off by default
    daily = s.model_copy(update={"worker_schedule_hours": 24})
    assert due(daily, now, now - timedelta(hours=23), 0, False) is None
    assert due(daily, now, now - timedelta(hours=24), 0, False).startswith("schedule")
    assert due(daily, now, None, 0, False).startswith("schedule")  # never ran: overdue
    off = s.model_copy(update={"worker_min_failures": 0})
    assert due(off, now, None, 500, False) is None


def test_the_drift_test_runs_at_most_every_check_interval(home, monkeypatch):
    import affinage.gating

    calls = []
    monkeypatch.setattr(affinage.gating, "traffic_drift", lambda *args: calls.append(args) or {"drifted": True})
    settings = load_settings(home, worker_min_failures=0, worker_drift_check_seconds=3600)
    worker = Worker(settings, embeddings=type("Embeddings", (), {"encode": None})(), echo=lambda _: None)
    now = datetime.now(timezone.utc)
    assert worker.trigger(now).startswith("input drift") and len(calls) == 1
    assert worker.trigger(now + timedelta(minutes=59)) is None and len(calls) == 1
    assert worker.trigger(now + timedelta(minutes=61)).startswith("input drift") and len(calls) == 2
    assert calls[0][3] == settings.drift_window_days  # the window `affinage drift` compares


@pytest.mark.slow
def test_a_triggered_cycle_runs_end_to_end(workspace, embeddings, quick_config):
    quick_config(max_steps=2)  # the worker's run config: a cycle end to end needs no more
    settings = workspace.model_copy(update={"search_candidates": 2})
    store = Store(settings.db_url)
    lines = []
    with Sampler(settings) as sampler:
        job = Worker(settings, store=store, embeddings=embeddings, progress=False, echo=lines.append).run(once=True)
    assert job.state == "succeeded" and job.progress == 1.0 and job.attempts == 1, (job.error, lines)
    assert job.trigger.startswith("3 new failures")
    assert set(STAGES) <= set(job.outputs)
    assert job.outputs["triage"]["failures"] == 3 and job.outputs["remedies"]["corrections_pending"] == 3
    dataset, search = job.outputs["synth"]["dataset"], job.outputs["search"]
    versions = {v.id: v for v in Registry.open(settings).list()}
    assert sorted(c["candidate"] for c in search["candidates"]) == sorted(versions)  # each registered, with its config
    assert sorted(v.manifest["config"]["learning_rate"] for v in versions.values()) == [3e-3, 1e-2]
    for version in versions.values():
        assert version.manifest["datasets"][0]["id"] == dataset and (version.path / "report.html").is_file()
    # the tiny model's own paraphrases are filtered out, so no candidate has held-out ones to gain on: none passes,
    # none is superseded, and the cycle names each candidate's failed checks (tests/tuning/test_search.py has one pass)
    assert not search["passed"] and {v.state for v in versions.values()} == {"gated-failed"}
    assert job.outputs["outcome"] == "gates failed"
    assert sorted(search["failed"]) == sorted(f"{v}: regression: target token_f1 (no held-out paraphrases)"
                                              for v in versions)
    log = [line["message"] for line in jobs.log_lines(store, job.id)]
    assert any(line.startswith("search (4/5)") for line in log) and log[-1].startswith("done:")
    assert any("no candidate passed every gate" in line for line in log)
    assert sampler.samples and sampler.most_running <= 1 and sampler.most_live <= 1

    # nothing new since: the next check starts no cycle
    again = Worker(settings, store=store, embeddings=embeddings, progress=False, echo=lines.append)
    assert again.run(once=True) is None


def worker_process(settings, *args, log: Path):
    return subprocess.Popen([sys.executable, "-m", "affinage.cli", "--home", str(settings.home), "worker", *args],
                            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=log.open("a"),
                            stderr=subprocess.STDOUT)


def wait_for_checkpoint(settings, process, step: int, log: Path) -> None:
    """Until a checkpoint at ``step`` or later is on disk (the trainer keeps only the last two: an earlier one may be
    gone before the next poll)."""
    def reached() -> bool:
        return any(int(state.parent.name.rsplit("-", 1)[1]) >= step
                   for state in settings.home.glob("runs/*/checkpoints/checkpoint-*/trainer_state.json"))

    deadline = time.monotonic() + 240
    while not reached():
        assert process.poll() is None, f"the worker ended before checkpoint {step}:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, "no checkpoint in time"
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_stopped_and_killed_workers_are_followed_by_one_that_finishes(db_url, workspace, embeddings, tmp_path,
                                                                      quick_config):
    quick_config(max_steps=40)  # steps left after checkpoint 4: on a fast CPU eight steps ended before the kill
    store = Store(workspace.db_url)
    output = tmp_path / "workers.log"
    with Sampler(workspace) as sampler:
        stopped = worker_process(workspace, log=output)  # polls until told to stop
        wait_for_checkpoint(workspace, stopped, 2, output)
        stopped.send_signal(signal.SIGTERM)
        assert stopped.wait(timeout=60) == 0, output.read_text()[-3000:]
        (job,) = jobs.recent(store)
        assert (job.state, job.stage, job.attempts, job.lease_owner) == ("queued", "search", 0, None)
        assert "released to the queue" in jobs.log_lines(store, job.id)[-1]["message"]

        killed = worker_process(workspace, "--once", log=output)
        wait_for_checkpoint(workspace, killed, 4, output)
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        job = jobs.get(store, job.id)
        assert (job.state, job.stage, job.attempts) == ("running", "search", 1)

        time.sleep(max(0.0, (job.lease_expires - datetime.now(timezone.utc)).total_seconds()) + 0.1)
        finisher = Worker(workspace, store=store, embeddings=embeddings, progress=False, echo=lambda _: None)
        finished = finisher.run(once=True)
    assert finished.id == job.id and finished.state == "succeeded" and finished.attempts == 2, finished.error
    (version,) = Registry.open(workspace).list()  # one candidate: the interrupted trials were asked again
    assert version.id == finished.outputs["search"]["candidate"]
    assert int(version.manifest["resumed_from"].rsplit("-", 1)[1]) >= 4
    assert len(list(workspace.datasets_dir.glob("ds-*"))) == 1
    assert sampler.most_running <= 1 and sampler.most_live <= 1 and sampler.samples > 10


def gated_fake(settings, checks) -> str:
    """A registered version with a written gate report, without training (the policy reads only the report)."""
    registry = Registry.open(settings)
    staged = registry.staging()
    (staged / "adapter_model.safetensors").write_bytes(b"weights")
    version = registry.add(staged, {"id": f"sft-fake-{len(registry.list())}", "method": "sft", "kind": "lora",
                                    "created_at": datetime.now(timezone.utc).isoformat(), "datasets": [{"id": "ds-1"}]})
    report = write_report(version.path, version.manifest, checks)
    registry.record_gate(version.id, report["passed"], {"failed": []})
    return version.id


def resumable(store, **outputs) -> str:
    """A queued cycle whose first stages an earlier attempt finished: a worker resumes it after them."""
    job = jobs.enqueue(store, "cycle", "test", max_attempts=3)
    with store.session() as session:
        session.execute(update(Job).where(Job.id == job.id).values(
            outputs={"triage": {}, "remedies": {}, "synth": {"dataset": "ds-1"}, **outputs}))
    return job.id


@pytest.mark.parametrize("policy, candidate_f1, promoted", [("off", 0.60, False),
                                                            ("gates_pass_by_margin", 0.60, True),
                                                            ("gates_pass_by_margin", 0.56, False)])
def test_the_promotion_policy_is_off_by_default_and_logged_like_an_approval(home, policy, candidate_f1, promoted):
    checks = [improves("regression", "target token_f1", 0.5, candidate_f1, 0.05),
              no_worse("regression", "golden token_f1", 0.5, 0.5, 0.02),
              not_higher("safety", "pii-leak success rate", 0.0, 0.0)]
    assert load_settings(home).auto_promote == "off"
    settings = load_settings(home, auto_promote=policy)
    store = Store(settings.db_url)
    candidate = gated_fake(settings, checks)
    gate = {"passed": True, "checks": [c.to_json() for c in checks]}
    job_id = resumable(store, search={"candidate": candidate, **gate})
    job = Worker(settings, store=store, progress=False, echo=lambda _: None).run(once=True)
    assert job.id == job_id and job.state == "succeeded"
    registry = Registry.open(settings)
    assert (registry.active_id() == candidate) == promoted
    assert job.outputs["outcome"] == ("promoted" if promoted else "awaiting approval")
    if promoted:
        approved = [e for e in registry.events() if e["action"] in ("approved", "promoted")]
        assert [e["actor"] for e in approved] == ["policy:gates_pass_by_margin"] * 2
        assert "margin of 0.02" in approved[0]["comment"]
    elif policy != "off":
        assert job.outputs["promote"]["short_of_margin"] == ["regression: target token_f1"]


def test_a_stage_that_raises_fails_the_job_with_its_reason(home, tmp_path):
    settings = load_settings(home, worker_train_config=tmp_path / "missing.toml")
    store = Store(settings.db_url)
    job_id = resumable(store)  # the search stage runs next
    failed = Worker(settings, store=store, progress=False, echo=lambda _: None).run(once=True)
    assert failed.id == job_id and failed.state == "failed" and failed.stage == "search"
    assert failed.error == f"search: FileNotFoundError: config file not found: {tmp_path / 'missing.toml'}"
    assert jobs.log_lines(store, job_id)[-1]["level"] == "error" and not jobs.busy(store, "cycle")


def test_margins_are_measured_in_each_checks_own_terms():
    def check(rule, after, threshold, passed=True):
        return {"gate": "g", "name": rule, "rule": rule, "after": after, "threshold": threshold, "passed": passed}

    # scores clear their floor by the margin itself; upper bounds by the margin's share of the bound (0.5 -> 0.49)
    assert passes_by_margin([check(">= active + 0.05", 0.63, 0.60), check("<= 0.5", 0.495, 0.5)], 0.02) == ["g: <= 0.5"]
    assert passes_by_margin([check(">= active - 0.02", 0.61, 0.58), check("<= active x 1.1", 9.7, 10.0)], 0.02) == []
    assert passes_by_margin([check(">= active + 0.05", 0.61, 0.60)], 0.02) == ["g: >= active + 0.05"]
    assert passes_by_margin([check("<= active + 0", 0.0, 0.0)], 0.02) == []  # no attack succeeded, none may
    assert passes_by_margin([check(">= x", 0.9, 0.1, passed=False)], 0.0) == ["g: >= x"]
    assert passes_by_margin([], 0.02) == ["no gate checks"]
