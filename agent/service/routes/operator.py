"""Operator routes: corrections to review, failure topics, datasets, candidates and their gate reports, decisions,
promotion, rollback, the worker's jobs and their logs, the output guard's events, and the audit log. Registry and job rules live behind the
handed-in backends (``agent.service.backends``); these routes only turn them into HTTP."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from typing import Literal

from fastapi import APIRouter, Query
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field
from sqlalchemy import String, cast, select

from affinage.core.tables import Feedback, Interaction
from affinage.core.timeutil import as_utc
from agent.corrections import UnknownCorrection, correction_info, pending_corrections, review_correction
from agent.service.deps import AgentDep, BackendsDep, OperatorCaller, SettingsDep, StoreDep
from agent.service.errors import APIError
from agent.detectors import GUARD_REASON
from agent.service.schemas import CorrectionInfo, GuardEvent, ReviewResult

log = logging.getLogger("affinage.service")
router = APIRouter(prefix="/api/operator", tags=["operator"])


def report_csp(style_hash: str) -> str:
    """A gate report is shown as it is: data: images and its one stylesheet (allowed by hash), nothing else."""
    return f"default-src 'none'; img-src data:; style-src {style_hash}; base-uri 'none'; form-action 'none'"


class Decision(BaseModel):
    comment: str = Field(min_length=1, max_length=2000, description="Why: kept in the audit log.")
    override_reason: str | None = Field(
        None, max_length=2000, description="Approve despite failed gates: admins only, kept in the audit log.")


# --- corrections ----------------------------------------------------------------------------------------------------
@router.get("/corrections", response_model=list[CorrectionInfo])
def corrections(_: OperatorCaller, store: StoreDep) -> list[dict]:
    return [correction_info(f, i) for f, i in pending_corrections(store)]


@router.post("/corrections/{feedback_id}/{decision}", response_model=ReviewResult)
def review(feedback_id: str, decision: Literal["approve", "reject"], who: OperatorCaller, store: StoreDep) -> dict:
    try:
        example = review_correction(store, feedback_id, decision == "approve", who.name)
    except UnknownCorrection as error:
        raise APIError(404, str(error), "correction_not_found", "feedback_id") from None
    except ValueError as error:
        raise APIError(409, str(error), "already_reviewed", "feedback_id") from None
    log.info("correction reviewed", extra={"feedback_id": feedback_id, "decision": decision, "by": who.name})
    return {"id": feedback_id, "review": "approved" if example else "rejected",
            "example_id": example.id if example else None}


# --- model versions -------------------------------------------------------------------------------------------------
@router.get("/models")
def models(_: OperatorCaller, backends: BackendsDep) -> dict:
    return backends.registry.overview()


@router.get("/models/{version_id}/report", response_class=HTMLResponse)
def report(version_id: str, _: OperatorCaller, backends: BackendsDep) -> HTMLResponse:
    path = backends.registry.report_path(version_id)
    if not path.is_file():
        raise APIError(404, f"version {version_id} has no gate report yet: run `affinage gate {version_id}`",
                       "report_not_found", "id")
    return HTMLResponse(path.read_text(encoding="utf-8"),
                        headers={"Content-Security-Policy": report_csp(backends.report_style_hash)})


@router.post("/models/{version_id}/{decision}")
def decide(version_id: str, decision: Literal["approve", "reject"], body: Decision, who: OperatorCaller,
           backends: BackendsDep) -> dict:
    if body.override_reason and not who.can("admin"):
        raise APIError(403, "approving a version that failed its gates needs the admin role", "insufficient_role")
    version = backends.registry.decide(version_id, decision == "approve", actor=who.name, comment=body.comment,
                                       override_reason=body.override_reason)
    log.info("version decided", extra={"version": version_id, "decision": decision, "by": who.name})
    return version


@router.post("/promote/{version_id}")
def promote(version_id: str, who: OperatorCaller, backends: BackendsDep) -> dict:
    version = backends.registry.promote(version_id, actor=who.name)
    log.info("version promoted", extra={"version": version_id, "by": who.name})
    return version


@router.post("/rollback")
def rollback(who: OperatorCaller, backends: BackendsDep) -> dict:
    active = backends.registry.rollback(actor=who.name)
    log.info("rolled back", extra={"version": active, "by": who.name})
    return {"active": active}


# --- what the loop made and found -----------------------------------------------------------------------------------
@router.get("/datasets")
def datasets(_: OperatorCaller, settings: SettingsDep) -> list[dict]:
    from affinage.core.datasets import list_datasets

    return [{**{k: m.get(k) for k in ("id", "created_at", "counts", "base_model", "teacher", "contributors")},
             "per_user_cap": (m.get("filters") or {}).get("per_user_cap")}
            for m in reversed(list_datasets(settings.datasets_dir))]


@router.get("/topics")
def topics(_: OperatorCaller, store: StoreDep, agent: AgentDep, days: float = 30) -> list[dict]:
    from agent.triage import triage

    if not 0 < days <= 3650:
        raise APIError(400, f"days must be in (0, 3650], got {days}", "invalid_request", "days")
    since = datetime.now(timezone.utc) - timedelta(days=days)
    return [t.to_json() for t in triage(store, agent.retriever.embeddings.encode, since=since)]


@router.get("/jobs")
def job_list(_: OperatorCaller, backends: BackendsDep) -> list[dict]:
    """The worker's jobs, newest first: state, stage, progress, attempts, error, times and what they made."""
    return backends.jobs.recent()


@router.get("/jobs/{job_id}/log")
def job_log(job_id: str, _: OperatorCaller, backends: BackendsDep) -> dict:
    return {"id": job_id, "lines": backends.jobs.log_lines(job_id)}


@router.get("/audit")
def audit(_: OperatorCaller, store: StoreDep, backends: BackendsDep) -> list[dict]:
    """Who did what and when: registry events and correction reviews, newest first. A canary's figures stay in the
    event (`affinage canary status --json`, the canary panel); its one-line reason here names the deciding ones."""
    events = [{"at": e["at"], "actor": e["actor"], "action": e["action"], "subject": e["version"],
               "detail": "; ".join(f"{k}: {v}" for k, v in e.items()
                                   if k not in ("at", "actor", "action", "version", "figures") and v is not None)}
              for e in backends.registry.events()]
    with store.session() as session:
        for f in session.scalars(select(Feedback).where(Feedback.reviewed_at.is_not(None))):
            events.append({"at": f.reviewed_at.isoformat(), "actor": f.reviewed_by, "action": f"correction {f.review}",
                           "subject": f.id, "detail": ""})
    return sorted(events, key=lambda e: e["at"], reverse=True)


@router.get("/guard-events", response_model=list[GuardEvent])
def guard_events(_: OperatorCaller, store: StoreDep, limit: int = Query(50, ge=1, le=500),
                 before: datetime | None = None) -> list[dict]:
    """Answers the output guards changed before the customer saw them (a link off the policy, the system prompt),
    newest first: ``limit`` of them, older than ``before`` (the last one's ``at``, for the next page)."""
    query = (select(Interaction.id, Interaction.created_at, Interaction.model_version, Interaction.question,
                    Interaction.signals)
             .where(cast(Interaction.signals, String).contains("output_guard"))  # a cheap pre-filter, checked below
             .order_by(Interaction.created_at.desc(), Interaction.id.desc()))
    if before is not None:
        query = query.where(Interaction.created_at < as_utc(before))
    events: list[dict] = []
    with store.session() as session:
        for row in session.execute(query.execution_options(yield_per=200)):
            events += [{"at": row.created_at.isoformat(), "interaction_id": row.id, "model_version": row.model_version,
                        "removed": s["reason"].removeprefix(GUARD_REASON), "question": row.question}
                       for s in row.signals or () if s.get("kind") == "output_guard"]
            if len(events) >= limit:
                break
    return events[:limit]
