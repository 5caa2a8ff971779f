"""`affinage worker`: watch the interaction log, start an improvement cycle when a trigger fires, and run it as a
durable job so that a worker that dies leaves the job to the next one.

A cycle is triage -> immediate remedies -> synth -> a search of candidates, each trained and gated -> promotion
policy (by default: the best passing candidate waits for an operator), run by ``affinage.cycle.run_cycle`` as `affinage demo` runs it. Each finished stage's record
is saved on the job before the next starts (``JobHooks``), so a worker that reclaims an expired job skips what is
done and resumes the rest. One cycle is queued or running at a time.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import traceback
import uuid
from datetime import datetime, timedelta
from typing import Callable

from sqlalchemy import select

from affinage import gating
from affinage.canary import CanaryMonitor
from affinage.core.settings import Settings
from affinage.core.store import Store
from affinage.core.tables import Interaction, Job
from affinage.core.timeutil import utcnow
from affinage.cycle import STAGES, Cycle, Hooks, run_cycle
from retrieval.embeddings import SentenceEmbeddings
from tuning import jobs
from tuning.registry import Registry

KIND = "cycle"
log = logging.getLogger("affinage.worker")


def due(settings: Settings, now: datetime, last_cycle: datetime | None, new_failures: int, drifted: bool) -> str | None:
    """Why a cycle should start now, or None: enough new failures, drift (unless a cycle began within the drift
    window, which already saw it), or the schedule."""
    def elapsed(period: timedelta) -> bool:
        return last_cycle is None or now - last_cycle >= period

    minimum, every = settings.worker_min_failures, settings.worker_schedule_hours
    if minimum and new_failures >= minimum:
        return f"{new_failures} new failures since the last cycle (worker_min_failures = {minimum})"
    if drifted and elapsed(timedelta(days=settings.drift_window_days)):
        return f"input drift in the last {settings.drift_window_days:g} days"
    if every and elapsed(timedelta(hours=every)):
        return f"schedule: every {every:g} hours"
    return None


def failures_since(store: Store, since: datetime | None, enough: int) -> int:
    """Failures (interactions with a signal, outside eval) logged since ``since``, counted up to ``enough``."""
    query = select(Interaction.signals).where(Interaction.channel != "eval")
    if since is not None:
        query = query.where(Interaction.created_at > since)
    count = 0
    with store.session() as session:
        for signals in session.scalars(query.execution_options(yield_per=500)):
            count += bool(signals)  # a JSON list: "non-empty" is checked here, not in dialect-specific SQL
            if count >= enough:
                break
    return count


class Stop(BaseException):
    """SIGTERM or SIGINT while a job runs: release it and exit (a BaseException, so no stage swallows it)."""


class Heartbeat:
    """Renews the job's lease every third of it while a stage runs; notes when the lease was lost."""

    def __init__(self, store: Store, job_id: str, owner: str, lease_s: float):
        self.store, self.job_id, self.owner, self.lease_s = store, job_id, owner, lease_s
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{job_id[:8]}", daemon=True)

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            try:
                if not jobs.heartbeat(self.store, self.job_id, self.owner, self.lease_s):
                    self.lost.set()
                    return
            except Exception as error:  # noqa: BLE001 - a busy database must not end the heartbeat; retry next beat
                log.warning("heartbeat failed", extra={"job": self.job_id, "error": str(error)})


class JobLogHandler(logging.Handler):
    """Copies the packages' log lines (synth, gates, serving) into the running job's log."""

    _STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}

    def __init__(self, store: Store, job_id: str):
        super().__init__(logging.INFO)
        self.store, self.job_id = store, job_id

    def emit(self, record: logging.LogRecord) -> None:
        extra = ", ".join(f"{k}={v}" for k, v in vars(record).items() if k not in self._STANDARD)
        try:
            jobs.log(self.store, self.job_id, record.getMessage() + (f" ({extra})" if extra else ""),
                     record.levelname.lower())
        except Exception:  # noqa: BLE001 - logging must never break the job
            self.handleError(record)


class Worker:
    """One worker process: checks triggers, claims jobs, runs cycles. Several may share a database."""

    def __init__(self, settings: Settings, store: Store | None = None, embeddings=None, progress: bool = True,
                 echo: Callable[[str], None] | None = None):
        self.settings = settings
        self.store = store or Store(settings.db_url)
        self.progress = progress
        self.echo = echo or (lambda line: print(line, file=sys.stderr, flush=True))
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.stopping = threading.Event()
        self._embeddings = embeddings
        self._next_drift_check: datetime | None = None
        self._busy = False

    @property
    def embeddings(self):
        if self._embeddings is None:
            self._embeddings = SentenceEmbeddings(self.settings.embedder)
        return self._embeddings

    # -- triggers ------------------------------------------------------------------------------------------------
    def trigger(self, now: datetime) -> str | None:
        """The reason to start a cycle now, if any; the drift test runs at most every worker_drift_check_seconds."""
        s = self.settings
        last = jobs.last_created(self.store, KIND)
        new = failures_since(self.store, last, s.worker_min_failures) if s.worker_min_failures else 0
        drifted = False
        window_passed = last is None or now - last >= timedelta(days=s.drift_window_days)
        if (s.worker_drift_check_seconds and window_passed and not due(s, now, last, new, False)
                and (self._next_drift_check is None or now >= self._next_drift_check)):
            self._next_drift_check = now + timedelta(seconds=s.worker_drift_check_seconds)
            drifted = gating.traffic_drift(s, self.store, self.embeddings.encode, s.drift_window_days)["drifted"]
        return due(s, now, last, new, drifted)

    # -- the loop ------------------------------------------------------------------------------------------------
    def step(self) -> Job | None:
        """Queue a cycle if a trigger fires (and none is queued or running), then run the oldest claimable job.
        Returns that job as it ended, or None when there was nothing to run."""
        if not jobs.busy(self.store, KIND):
            reason = self.trigger(utcnow())
            queued = reason and jobs.enqueue(self.store, KIND, reason, self.settings.worker_max_attempts)
            if queued:
                self.echo(f"cycle {queued.id} queued: {reason}")
        job = jobs.claim(self.store, self.owner, self.settings.worker_lease_seconds)
        if job is None:
            return None
        self.execute(job)
        return jobs.get(self.store, job.id)

    def run(self, once: bool = False) -> Job | None:
        """Poll until SIGTERM or SIGINT (``once``: a single step, and one look at a running canary). Returns the
        last job run. A running canary is watched on its own thread meanwhile (``affinage.canary.CanaryMonitor``)."""
        handlers = {}
        if threading.current_thread() is threading.main_thread():
            handlers = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        last = None
        monitor = CanaryMonitor(self.settings, self.store, Registry.open(self.settings, self.store))
        monitor.check_logged()
        if not once:
            monitor.start()
        try:
            while not self.stopping.is_set():
                try:
                    last = self.step() or last
                except Exception as error:  # noqa: BLE001 - a busy database or a failed drift test must not end
                    if once:  # a long-running worker; the next poll tries again
                        raise
                    self.echo(f"worker: {type(error).__name__}: {error}")
                if once:
                    break
                self.stopping.wait(self.settings.worker_poll_seconds)
        finally:
            monitor.stop()
            for sig, previous in handlers.items():
                signal.signal(sig, previous)
        return last

    def _on_signal(self, signum, _frame) -> None:
        self.stopping.set()
        if self._busy:
            raise Stop(signal.Signals(signum).name)

    # -- one job -------------------------------------------------------------------------------------------------
    def execute(self, job: Job) -> None:
        """Run the job's unfinished stages (``affinage.cycle.run_cycle``) under a renewed lease; record success, the
        failure's reason, or hand the job back on shutdown. A lost lease stops the work without writing: the job has
        a new owner."""
        heartbeat = Heartbeat(self.store, job.id, self.owner, self.settings.worker_lease_seconds)
        hooks = JobHooks(self, job, heartbeat.lost)
        handler = JobLogHandler(self.store, job.id)
        package_log = logging.getLogger("affinage")
        package_log.addHandler(handler)
        previous_level = package_log.level
        package_log.setLevel(min(previous_level or logging.INFO, logging.INFO))
        try:
            with heartbeat:
                self._busy = True
                self.note(job.id, f"attempt {job.attempts} of {job.max_attempts} by {self.owner}: {job.trigger}")
                cycle = Cycle(self.settings, self.store, lambda: self.embeddings, self.progress)
                outputs = run_cycle(cycle, hooks, hooks.outputs)
                self._busy = False
                jobs.finish(self.store, job.id, self.owner, outputs=outputs, progress=1.0)
                self.note(job.id, f"done: {outputs.get('outcome', 'finished')}")
        except Stop as stop:
            self._busy = False
            if jobs.release(self.store, job.id, self.owner):
                self.note(job.id, f"{stop} during {hooks.stage}: released to the queue for the next worker", "warning")
        except jobs.LeaseLost as error:
            self.echo(f"job {job.id}: {error}; leaving it to its new owner")
        except Exception as error:  # noqa: BLE001 - a stage error fails the job with its reason; the loop goes on
            self._busy = False
            reason = f"{hooks.stage}: {type(error).__name__}: {(str(error).strip().splitlines() or ['(no message)'])[0]}"
            self.echo(traceback.format_exc().rstrip())
            self.note(job.id, f"failed in {reason}", "error")
            try:
                jobs.finish(self.store, job.id, self.owner, error=reason, outputs=hooks.outputs)
            except jobs.LeaseLost:
                self.echo(f"job {job.id}: lost its lease while failing")
        finally:
            self._busy = False
            package_log.removeHandler(handler)
            package_log.setLevel(previous_level)

    def note(self, job_id: str, line: str, level: str = "info") -> None:
        """A line in the job's log (the console shows it) and on stderr."""
        self.echo(f"job {job_id[:8]} {line}")
        jobs.log(self.store, job_id, line, level)


class JobHooks(Hooks):
    """The worker's side of a cycle: the lease and a stop request checked before each stage, each record saved on
    the job as the stage ends (so a worker that reclaims the job resumes after it), notes in the job's log."""

    def __init__(self, worker: Worker, job: Job, lease_lost: threading.Event):
        self.worker, self.job, self.lease_lost = worker, job, lease_lost
        self.outputs, self.stage = dict(job.outputs or {}), None  # as far as the job got: what a failure records

    def note(self, stage: str, line: str) -> None:
        self.worker.note(self.job.id, f"{stage}: {line}")

    def save(self, outputs: dict, **values) -> None:
        self.outputs = outputs
        jobs.save(self.worker.store, self.job.id, self.worker.owner, outputs=outputs, **values)

    def before(self, stage: str, number: int) -> None:
        self.stage = stage
        if self.lease_lost.is_set():
            raise jobs.LeaseLost(f"job {self.job.id} lost its lease")
        if self.worker.stopping.is_set():  # a signal that came before the job was marked busy
            raise Stop("stop requested")
        jobs.save(self.worker.store, self.job.id, self.worker.owner, stage=stage, progress=number / len(STAGES))
        self.worker.note(self.job.id, f"{stage} ({number + 1}/{len(STAGES)})")

    def after(self, stage: str, number: int, outputs: dict) -> None:
        self.save(outputs, progress=(number + 1) / len(STAGES))
