"""Operator routes: failure topics, datasets, candidates and their gate reports, decisions, promotion, rollback,
the worker's jobs and their logs, and the audit log. Registry rules (gates passed, comments, admin overrides) live
in ``tuning.registry`` and job rules in ``tuning.jobs``; these routes only turn them into HTTP."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from typing import Callable, Literal

from fastapi import APIRouter, Depends
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field
from sqlalchemy import select

from affinage.core.settings import Settings
from agent.service.errors import APIError
from affinage.core.tables import Feedback
from affinage.core.store import Store
from tuning import jobs
from tuning.registry import BASE, Registry, RegistryError, UnknownVersion
from tuning.report import REPORT_STYLE_HASH

log = logging.getLogger("affinage.service")
REPORT_CSP = f"default-src 'none'; img-src data:; style-src {REPORT_STYLE_HASH}; base-uri 'none'; form-action 'none'"


class Decision(BaseModel):
    comment: str = Field(min_length=1, max_length=2000, description="Why: kept in the audit log.")
    override_reason: str | None = Field(
        None, max_length=2000, description="Approve despite failed gates: admins only, kept in the audit log.")


def registry_error(error: RegistryError) -> APIError:
    if isinstance(error, UnknownVersion):
        return APIError(404, str(error), "version_not_found", "id")
    return APIError(409, str(error), "registry_conflict", "id")


def operator_routes(settings: Settings, store: Store, embed: Callable, require: Callable) -> APIRouter:
    router = APIRouter(prefix="/api/operator", tags=["operator"])
    registry = Registry.open(settings, store)

    @router.get("/models")
    def models(_=Depends(require("operator"))) -> dict:
        return {"active": registry.active_id() or BASE, "versions": [v.to_json() for v in reversed(registry.list())]}

    @router.get("/models/{version_id}/report", response_class=HTMLResponse)
    def report(version_id: str, _=Depends(require("operator"))) -> HTMLResponse:
        try:
            path = registry.get(version_id).path / "report.html"
        except RegistryError as error:
            raise registry_error(error) from None
        if not path.is_file():
            raise APIError(404, f"version {version_id} has no gate report yet: run `affinage gate {version_id}`",
                           "report_not_found", "id")
        return HTMLResponse(path.read_text(encoding="utf-8"), headers={"Content-Security-Policy": REPORT_CSP})

    @router.post("/models/{version_id}/{decision}")
    def decide(version_id: str, decision: Literal["approve", "reject"], body: Decision,
               who=Depends(require("operator"))) -> dict:
        if body.override_reason and not who.can("admin"):
            raise APIError(403, "approving a version that failed its gates needs the admin role", "insufficient_role")
        try:
            version = registry.decide(version_id, decision == "approve", actor=who.name, comment=body.comment,
                                      override_reason=body.override_reason)
        except RegistryError as error:
            raise registry_error(error) from None
        log.info("version decided", extra={"version": version_id, "decision": decision, "by": who.name})
        return version.to_json()

    @router.post("/promote/{version_id}")
    def promote(version_id: str, who=Depends(require("operator"))) -> dict:
        try:
            version = registry.promote(version_id, actor=who.name)
        except RegistryError as error:
            raise registry_error(error) from None
        log.info("version promoted", extra={"version": version_id, "by": who.name})
        return version.to_json()

    @router.post("/rollback")
    def rollback(who=Depends(require("operator"))) -> dict:
        try:
            active = registry.rollback(actor=who.name)
        except RegistryError as error:
            raise registry_error(error) from None
        log.info("rolled back", extra={"version": active or BASE, "by": who.name})
        return {"active": active or BASE}

    @router.get("/datasets")
    def datasets(_=Depends(require("operator"))) -> list[dict]:
        from affinage.core.datasets import list_datasets

        return [{k: m.get(k) for k in ("id", "created_at", "counts", "base_model", "teacher", "contributors")}
                for m in reversed(list_datasets(settings.datasets_dir))]

    @router.get("/topics")
    def topics(days: float = 30, _=Depends(require("operator"))) -> list[dict]:
        from agent.triage import triage

        if not 0 < days <= 3650:
            raise APIError(400, f"days must be in (0, 3650], got {days}", "invalid_request", "days")
        since = datetime.now(timezone.utc) - timedelta(days=days)
        return [t.to_json() for t in triage(store, embed, since=since)]

    @router.get("/jobs")
    def job_list(_=Depends(require("operator"))) -> list[dict]:
        """The worker's jobs, newest first: state, stage, progress, attempts, error, times and what they made."""
        return [jobs.info(job) for job in jobs.recent(store)]

    @router.get("/jobs/{job_id}/log")
    def job_log(job_id: str, _=Depends(require("operator"))) -> dict:
        try:
            return {"id": job_id, "lines": jobs.log_lines(store, job_id)}
        except jobs.UnknownJob as error:
            raise APIError(404, str(error), "job_not_found", "id") from None

    @router.get("/audit")
    def audit(_=Depends(require("operator"))) -> list[dict]:
        """Who did what and when: registry events and correction reviews, newest first."""
        events = [{"at": e["at"], "actor": e["actor"], "action": e["action"], "subject": e["version"],
                   "detail": "; ".join(f"{k}: {v}" for k, v in e.items()
                                       if k not in ("at", "actor", "action", "version") and v is not None)}
                  for e in registry.events()]
        with store.session() as session:
            for f in session.scalars(select(Feedback).where(Feedback.reviewed_at.is_not(None))):
                at = f.reviewed_at if f.reviewed_at.tzinfo else f.reviewed_at.replace(tzinfo=timezone.utc)
                events.append({"at": at.isoformat(), "actor": f.reviewed_by, "action": f"correction {f.review}",
                               "subject": f.id, "detail": ""})
        return sorted(events, key=lambda e: e["at"], reverse=True)

    return router
