"""The durable job queue: jobs live in the database, claimed under a lease that their worker keeps renewing.

Every change of hands is one conditional UPDATE, so two workers cannot both win: a claim succeeds only while the
job is queued or its lease has expired, and every later write names the lease owner and fails (``LeaseLost``)
once someone else holds the job. Each write is its own short transaction whose first statement writes, which
SQLite serialises and PostgreSQL row-locks. On PostgreSQL a claim first picks and locks its row with ``SELECT …
FOR UPDATE SKIP LOCKED`` in the same transaction, so racing workers skip each other's rows instead of queueing on
them. Times are the workers' UTC clocks, so their clocks must roughly agree; SQLite hands them back naive.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import Connection, and_, delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError

from affinage.core.tables import Job, JobLog
from affinage.core.store import Store
from affinage.core.timeutil import utcnow

LOG_LINES = 500  # newest lines kept per job
LOG_CHARS = 2000  # longest line kept


class LeaseLost(RuntimeError):
    """This worker no longer holds the job: its lease expired and another worker claimed it."""


class UnknownJob(LookupError):
    """No job by that id."""


def enqueue(store: Store, kind: str, trigger: str, max_attempts: int, outputs: dict | None = None,
            singleton: bool = True) -> Job | None:
    """A new queued job, or None when one of ``kind`` is already queued or running (one at a time; ``singleton``
    False lets jobs of ``kind`` queue side by side). ``outputs`` marks stages as already done (a worker skips them)."""
    try:
        return store.add(Job(kind=kind, singleton=kind if singleton else None, trigger=trigger,
                             max_attempts=max_attempts, outputs=dict(outputs or {})))
    except IntegrityError:
        return None


def _claimable(now: datetime):
    expired = and_(Job.state == "running", Job.lease_expires < now)
    return and_(or_(Job.state == "queued", expired), Job.attempts < Job.max_attempts)


def fail_exhausted(store: Store, now: datetime | None = None) -> int:
    """Fail jobs whose lease expired on their last allowed attempt: their workers keep dying."""
    now = now or utcnow()
    with store.engine.begin() as connection:
        return connection.execute(update(Job).where(
            Job.state == "running", Job.lease_expires < now, Job.attempts >= Job.max_attempts).values(
            state="failed", singleton=None, finished_at=now, lease_expires=None,
            error="the lease expired on the last allowed attempt: its workers keep dying")).rowcount


def pick(store: Store, now: datetime, limit: int = 5) -> list[str]:
    """Ids worth trying to claim, oldest first; the claim itself re-checks, so a stale pick is harmless."""
    with store.session() as session:
        return list(session.scalars(select(Job.id).where(_claimable(now)).order_by(Job.created_at).limit(limit)))


def _take(connection: Connection, job_id: str, owner: str, lease_s: float, now: datetime) -> bool:
    """The claiming UPDATE: it re-checks that the job is claimable, so it wins only once."""
    return connection.execute(update(Job).where(Job.id == job_id, _claimable(now)).values(
        state="running", lease_owner=owner, lease_expires=now + timedelta(seconds=lease_s), heartbeat_at=now,
        attempts=Job.attempts + 1, started_at=func.coalesce(Job.started_at, now))).rowcount == 1


def claim(store: Store, owner: str, lease_s: float, now: datetime | None = None) -> Job | None:
    """Take the oldest queued job, or one whose lease expired, for ``owner``; None when there is none."""
    now = now or utcnow()
    fail_exhausted(store, now)
    if store.engine.dialect.name == "postgresql":
        with store.engine.begin() as connection:
            job_id = connection.scalar(select(Job.id).where(_claimable(now)).order_by(Job.created_at).limit(1)
                                       .with_for_update(skip_locked=True))
            won = job_id is not None and _take(connection, job_id, owner, lease_s, now)
        return get(store, job_id) if won else None
    for job_id in pick(store, now):
        with store.engine.begin() as connection:
            won = _take(connection, job_id, owner, lease_s, now)
        if won:
            return get(store, job_id)
    return None


def get(store: Store, job_id: str) -> Job:
    with store.session() as session:
        job = session.get(Job, job_id)
    if job is None:
        raise UnknownJob(f"no job {job_id!r}")
    return job


def _owned(store: Store, job_id: str, owner: str, **values) -> bool:
    with store.engine.begin() as connection:
        return connection.execute(update(Job).where(
            Job.id == job_id, Job.lease_owner == owner, Job.state == "running").values(**values)).rowcount == 1


def heartbeat(store: Store, job_id: str, owner: str, lease_s: float) -> bool:
    """Renew the lease; False when ``owner`` lost the job."""
    now = utcnow()
    return _owned(store, job_id, owner, heartbeat_at=now, lease_expires=now + timedelta(seconds=lease_s))


def save(store: Store, job_id: str, owner: str, **values) -> None:
    """Record stage, progress or outputs, as the lease owner."""
    if not _owned(store, job_id, owner, **values):
        raise LeaseLost(f"job {job_id} is no longer held by {owner}")


def finish(store: Store, job_id: str, owner: str, error: str | None = None, **values) -> None:
    """Succeeded (no error) or failed with the reason; the kind is free for a new job either way."""
    save(store, job_id, owner, state="failed" if error else "succeeded", error=error, singleton=None,
         finished_at=utcnow(), lease_expires=None, **values)


def release(store: Store, job_id: str, owner: str) -> bool:
    """Back to the queue on a clean shutdown; the interrupted attempt is not counted."""
    return _owned(store, job_id, owner, state="queued", lease_owner=None, lease_expires=None,
                  attempts=Job.attempts - 1)


def log(store: Store, job_id: str, message: str, level: str = "info") -> None:
    """Append a line to the job's log, dropping the oldest beyond ``LOG_LINES``."""
    with store.session() as session:
        session.add(JobLog(job_id=job_id, level=level, message=message[:LOG_CHARS]))
        session.flush()
        cutoff = session.scalar(select(JobLog.id).where(JobLog.job_id == job_id).order_by(JobLog.id.desc())
                                .offset(LOG_LINES).limit(1))
        if cutoff is not None:
            session.execute(delete(JobLog).where(JobLog.job_id == job_id, JobLog.id <= cutoff))


def log_lines(store: Store, job_id: str) -> list[dict]:
    get(store, job_id)
    with store.session() as session:
        rows = session.scalars(select(JobLog).where(JobLog.job_id == job_id).order_by(JobLog.id))
        return [{"at": r.at.isoformat(), "level": r.level, "message": r.message} for r in rows]


def recent(store: Store, limit: int = 50) -> list[Job]:
    with store.session() as session:
        return list(session.scalars(select(Job).order_by(Job.created_at.desc()).limit(limit)))


def last_created(store: Store, kind: str) -> datetime | None:
    """When the newest job of ``kind`` was created, whatever became of it."""
    with store.session() as session:
        return session.scalar(select(func.max(Job.created_at)).where(Job.kind == kind))  # UTC, as the column reads


def busy(store: Store, kind: str) -> bool:
    """A job of ``kind`` is queued or running."""
    with store.session() as session:
        return session.scalar(select(func.count()).select_from(Job).where(Job.singleton == kind)) > 0


def info(job: Job) -> dict:
    """A job as the console and the CLI show it."""
    outputs = job.outputs or {}
    stamp = {name: getattr(job, name) for name in ("created_at", "started_at", "finished_at", "heartbeat_at",
                                                            "lease_expires")}
    return {"id": job.id, "kind": job.kind, "state": job.state, "trigger": job.trigger, "stage": job.stage,
            "progress": round(job.progress or 0.0, 3), "attempts": job.attempts, "max_attempts": job.max_attempts,
            "lease_owner": job.lease_owner, "error": job.error,
            **{name: value.isoformat() if value else None for name, value in stamp.items()},
            "dataset": (outputs.get("synth") or {}).get("dataset"),
            "candidate": (outputs.get("train") or {}).get("candidate"),
            "gate": (outputs.get("gate") or {}).get("passed"),
            "outcome": outputs.get("outcome")}
