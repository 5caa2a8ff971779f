"""Health (public) and Prometheus metrics (operators)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from agent.service.deps import AgentDep, LimitsDep, MetricsDep, OperatorCaller

router = APIRouter(tags=["ops"])


@router.get("/healthz")
def healthz(agent: AgentDep, limits: LimitsDep) -> dict:
    return {"status": "ok", "model": agent.model_version, "queue_depth": limits.queue.depth}


@router.get("/metrics")
def prometheus(_: OperatorCaller, limits: LimitsDep, metrics: MetricsDep) -> Response:
    metrics.queue_depth.set(limits.queue.depth)
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
