"""The app's assembly: state, error handlers, middleware and one router per concern. Everything the routes need
comes in as arguments (the agent; the registry, jobs and erasure ``Backends``) and lives on ``app.state``, where the
dependencies (``agent.service.deps``) read it. ``affinage.service.create_app`` builds those and calls ``assemble``."""

from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request

from affinage.core.settings import Settings
from agent.pipeline import SupportAgent
from agent.service.backends import Backends
from agent.service.errors import error_response, install_error_handlers
from agent.service.limits import BodySizeLimit, Limits
from agent.service.observability import Metrics
from agent.service.routes import canary, chat, erasure, feedback, health, keys, operator, pages

log = logging.getLogger("affinage.service")
# Metric labels come from closed sets, so no client can grow /metrics: HTTP's methods, else "other".
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
MAX_LOGGED_PATH = 200
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
# In this order: route matching follows it, and the static mounts (pages.mount_static) come after all of them.
ROUTERS = (chat.router, feedback.router, operator.router, canary.router, erasure.router, keys.router, health.router,
           pages.router)


def method_label(method: str) -> str:
    return method if method in HTTP_METHODS else "other"


@asynccontextmanager
async def follow_promotions(app: FastAPI):
    """Promotions and rollbacks reach the running service without a restart."""
    watcher = app.state.agent.watcher
    if watcher:
        watcher.start()
    yield
    if watcher:
        watcher.stop()


async def observe(request: Request, call_next):
    """Count, time and log every request, and answer any exception that escapes a route with a 500 in OpenAI's
    shape here, inside the counting, rather than as Starlette's plain-text page that nothing records."""
    metrics: Metrics = request.app.state.metrics
    begun = time.perf_counter()
    try:
        response = await call_next(request)
    except Exception:
        log.exception("unhandled error", extra={"method": method_label(request.method),
                                                "path": request.url.path[:MAX_LOGGED_PATH]})
        response = error_response(500, "internal error; it was logged", "internal_error")
    for name, value in SECURITY_HEADERS.items():  # a route may set a stricter or wider CSP of its own
        response.headers.setdefault(name, value)
    elapsed = time.perf_counter() - begun
    label = getattr(request.scope.get("route"), "path", "other")  # a route's template: a closed set
    method = method_label(request.method)
    metrics.requests.labels(label, method, str(response.status_code)).inc()
    metrics.latency.labels(label).observe(elapsed)
    log.info("request", extra={"method": method, "path": request.url.path[:MAX_LOGGED_PATH],
                               "status": response.status_code, "duration_s": round(elapsed, 4),
                               "caller": getattr(request.state, "caller", None)})
    return response


def assemble(settings: Settings, agent: SupportAgent, backends: Backends) -> FastAPI:
    """The app around one agent, with what it needs from the other layers handed in."""
    app = FastAPI(title="affinage", version="0.1.0", lifespan=follow_promotions, docs_url=None, redoc_url=None,
                  description="A support assistant with an OpenAI-compatible API.")
    limits = Limits.from_settings(settings, running=getattr(agent.llm, "max_batch", 0) or 1)
    app.state.settings, app.state.agent, app.state.store, app.state.backends = settings, agent, agent.store, backends
    app.state.limits, app.state.queue, app.state.metrics = limits, limits.queue, Metrics()
    app.state.started = time.time()
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)  # inside observe, so its 413s are counted
    app.middleware("http")(observe)
    for router in ROUTERS:
        app.include_router(router)
    pages.mount_static(app)
    return app
