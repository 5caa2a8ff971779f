"""The database's tables, one declarative model each: the interaction log and its neighbours, the worker's jobs,
API keys, erasures and the model registry's metadata.

The schema is managed by Alembic (``affinage.core.migrations``): a model changed here needs a new revision there."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import JSON, Boolean, Float, ForeignKey, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from affinage.core.timeutil import UTCDateTime, utcnow


def new_id() -> str:
    return uuid.uuid4().hex


class Base(DeclarativeBase):
    pass


class Interaction(Base):
    """One answered question: enough to replay, score and learn from it later."""

    __tablename__ = "interactions"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    question: Mapped[str] = mapped_column(Text)
    answer: Mapped[str] = mapped_column(Text)
    retrieved: Mapped[list] = mapped_column(JSON, default=list)  # [{"chunk_id", "source", "score"}], best first
    citations: Mapped[list] = mapped_column(JSON, default=list)  # [{"source", "score", "text"}] shown to the user
    examples: Mapped[list] = mapped_column(JSON, default=list)  # ids of the few-shot examples in the prompt
    abstained: Mapped[bool] = mapped_column(Boolean, default=False)
    signals: Mapped[list] = mapped_column(JSON, default=list)  # failure signals: [{"kind", "reason", "strength"}]
    prompt_version: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[str] = mapped_column(String(200))
    latency_s: Mapped[float] = mapped_column(Float)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    completion_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    channel: Mapped[str] = mapped_column(String(32), default="cli")  # cli | api | web
    user: Mapped[str | None] = mapped_column(String(200), nullable=True, index=True)
    conversation_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    # The end customer the client named (OpenAI's ``user``; the web chat's Customer ID), so that their data can be
    # found and erased (affinage.erasure); ``user`` is the API key that asked.
    customer: Mapped[str | None] = mapped_column(String(200), nullable=True, index=True)
    # Which arm of a running canary answered: "canary" or "active" (NULL: no canary was running). The version itself
    # is model_version; the arm is what the canary's live comparison counts (affinage.canary).
    arm: Mapped[str | None] = mapped_column(String(16), nullable=True, index=True)


class Example(Base):
    """A curated question/answer pair shown to the model as a few-shot example."""

    __tablename__ = "examples"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    question: Mapped[str] = mapped_column(Text)
    answer: Mapped[str] = mapped_column(Text)
    source: Mapped[str | None] = mapped_column(String(500), nullable=True)
    origin: Mapped[str] = mapped_column(String(32), default="curated")  # curated | correction
    interaction_id: Mapped[str | None] = mapped_column(ForeignKey("interactions.id"), nullable=True)
    added_by: Mapped[str | None] = mapped_column(String(200), nullable=True)
    customer: Mapped[str | None] = mapped_column(String(200), nullable=True, index=True)  # its interaction's


class Feedback(Base):
    """A support agent's verdict on an answer; corrections are what later stages learn from."""

    __tablename__ = "feedback"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    interaction_id: Mapped[str] = mapped_column(ForeignKey("interactions.id"), index=True)
    rating: Mapped[str] = mapped_column(String(8))  # up | down
    correction: Mapped[str | None] = mapped_column(Text, nullable=True)
    comment: Mapped[str | None] = mapped_column(Text, nullable=True)
    user: Mapped[str | None] = mapped_column(String(200), nullable=True, index=True)
    review: Mapped[str | None] = mapped_column(String(16), nullable=True)  # approved | rejected (corrections only)
    reviewed_by: Mapped[str | None] = mapped_column(String(200), nullable=True)
    reviewed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    customer: Mapped[str | None] = mapped_column(String(200), nullable=True, index=True)  # the interaction's


class Job(Base):
    """A background job (one improvement cycle), durable so that a worker that dies leaves it for the next one.

    ``singleton`` holds the job's kind while it is queued or running and NULL after: a unique column, so the
    database itself refuses a second queued or running job of a kind. Leases are claimed and renewed with
    conditional UPDATEs (``tuning.jobs``).
    """

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    kind: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16), default="queued", index=True)  # queued|running|succeeded|failed
    singleton: Mapped[str | None] = mapped_column(String(32), unique=True, nullable=True)
    trigger: Mapped[str] = mapped_column(Text)  # why it was started
    stage: Mapped[str | None] = mapped_column(String(32), nullable=True)  # the stage running or last run
    progress: Mapped[float] = mapped_column(Float, default=0.0)  # share of stages done, 0..1
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # claims so far (a release on shutdown gives one back)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    lease_owner: Mapped[str | None] = mapped_column(String(200), nullable=True)
    lease_expires: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    outputs: Mapped[dict] = mapped_column(JSON, default=dict)  # each finished stage's output, by stage name


class JobLog(Base):
    """One line of a job's log; ``tuning.jobs`` keeps the newest few hundred per job."""

    __tablename__ = "job_logs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    level: Mapped[str] = mapped_column(String(8), default="info")
    message: Mapped[str] = mapped_column(Text)


class ApiKey(Base):
    """An API key, stored only as its SHA-256: the plaintext is shown once, at creation."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Erasure(Base):
    """One erasure request (GDPR art. 17, ``affinage.erasure``): written with state 'running' and the ids it resolved
    before anything is deleted, so that a rerun after a crash finishes it. It holds no personal data: the selector
    only as sha256("kind:value"), random ids, and counts."""

    __tablename__ = "erasures"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    state: Mapped[str] = mapped_column(String(16), default="running")  # running | done
    actor: Mapped[str] = mapped_column(String(200))
    selector_kind: Mapped[str] = mapped_column(String(16))  # customer | conversation | interaction | matching
    selector_hash: Mapped[str] = mapped_column(String(64), index=True)
    interaction_ids: Mapped[list] = mapped_column(JSON, default=list)
    example_ids: Mapped[list] = mapped_column(JSON, default=list)  # bank entries matched by text alone
    counts: Mapped[dict] = mapped_column(JSON, default=dict)  # rows deleted, by table
    datasets: Mapped[list] = mapped_column(JSON, default=list)  # [{"old", "new", "removed"}] superseded
    versions: Mapped[list] = mapped_column(JSON, default=list)  # version ids flagged "trained on erased data"


# -- The model registry's metadata (tuning.registry) -------------------------------------------------------------
# Weights and manifest.json stay in the immutable version folders of the artifact directory; what changes over a
# version's life (its lifecycle state, its gate verdict), which version serves, and the audit log live here, so that
# several API replicas sharing one database see one registry and promotion is one transaction.


class RegistryVersion(Base):
    """A registered model version: a row exists only once its folder has been renamed into place."""

    __tablename__ = "registry_versions"

    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    state: Mapped[str] = mapped_column(String(16), default="candidate")  # the lifecycle state (tuning.registry)
    gate: Mapped[dict | None] = mapped_column(JSON, nullable=True)  # the gate verdict: {"passed", "at", ...}
    manifest: Mapped[dict] = mapped_column(JSON)  # a copy of the folder's manifest.json, for listing without disk
    flags: Mapped[dict | None] = mapped_column(JSON, nullable=True)  # e.g. trained on erased data (tuning.registry)


class RegistryPointer(Base):
    """The one row (id 1) saying which version serves; ``generation`` grows by one at every move (compare-and-set)."""

    __tablename__ = "registry_pointer"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    active: Mapped[str | None] = mapped_column(ForeignKey("registry_versions.id"), nullable=True)  # NULL: base model
    history: Mapped[list] = mapped_column(JSON, default=list)  # the previously active ids, oldest first
    ever_active: Mapped[list] = mapped_column(JSON, default=list)
    generation: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # The running canary, or NULL: {"version", "share" (percent of conversations), "started_at", "step_started_at",
    # "actor"}. It moves with the pointer's generation, so a share change and a rollback cannot both win.
    canary: Mapped[dict | None] = mapped_column(JSON, nullable=True)


class RegistryEvent(Base):
    """One line of the registry's audit log: who did what to which version, and when."""

    __tablename__ = "registry_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    action: Mapped[str] = mapped_column(String(32))
    version: Mapped[str] = mapped_column(String(200), index=True)  # a version id, or "base" for the bare base model
    actor: Mapped[str] = mapped_column(String(200))
    details: Mapped[dict] = mapped_column(JSON, default=dict)
