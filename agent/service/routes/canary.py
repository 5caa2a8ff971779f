"""Operator routes for a canary: its status (arms, rates with intervals, the sequential test's path), and starting,
advancing, stopping and rolling it back by hand. The rules live behind the handed-in backend (``affinage.canary``)."""

from __future__ import annotations

import logging

from fastapi import APIRouter
from pydantic import BaseModel, Field

from agent.service.deps import BackendsDep, OperatorCaller

log = logging.getLogger("affinage.service")
router = APIRouter(prefix="/api/operator/canary", tags=["operator"])


class CanaryStart(BaseModel):
    version: str = Field(min_length=1, max_length=200, description="An approved version.")
    share: int = Field(gt=0, lt=100, description="Percent of new conversations it serves first.")


class CanaryAdvance(BaseModel):
    share: int | None = Field(None, gt=0, le=100, description="The new share; default: the next configured step. "
                              "100 makes the version the active one.")


class CanaryComment(BaseModel):
    comment: str = Field(min_length=1, max_length=2000, description="Why: kept in the audit log.")


@router.get("")
def status(_: OperatorCaller, backends: BackendsDep) -> dict:
    return backends.canary.status()


@router.post("")
def start(body: CanaryStart, who: OperatorCaller, backends: BackendsDep) -> dict:
    result = backends.canary.start(body.version, body.share, actor=who.name)
    log.info("canary started", extra={"version": body.version, "share": body.share, "by": who.name})
    return result


@router.post("/advance")
def advance(body: CanaryAdvance, who: OperatorCaller, backends: BackendsDep) -> dict:
    result = backends.canary.advance(body.share, actor=who.name)
    log.info("canary advanced", extra={"share": body.share, "by": who.name})
    return result


@router.post("/stop")
def stop(body: CanaryComment, who: OperatorCaller, backends: BackendsDep) -> dict:
    result = backends.canary.stop(actor=who.name, comment=body.comment)
    log.info("canary stopped", extra={"by": who.name})
    return result


@router.post("/rollback")
def roll_back(body: CanaryComment, who: OperatorCaller, backends: BackendsDep) -> dict:
    result = backends.canary.roll_back(actor=who.name, comment=body.comment)
    log.info("canary rolled back", extra={"by": who.name})
    return result
