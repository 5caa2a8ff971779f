"""The routes' dependencies, in one place: who is calling (``get_caller``, ``require_role``) and what a route works
with (settings, agent, store, limits, metrics, the handed-in backends), each read from ``app.state``, where the
assembly (``agent.service.app.assemble``) puts them. Tests replace any of them the FastAPI way, e.g.
``app.dependency_overrides[get_caller] = lambda: Caller("tester", "admin")``."""

from __future__ import annotations

from functools import cache
from typing import Annotated, Any, Awaitable, Callable

from fastapi import Depends, Request

from affinage.core.settings import Settings
from affinage.core.store import Store
from agent.pipeline import SupportAgent
from agent.service import auth
from agent.service.backends import Backends
from agent.service.errors import APIError
from agent.service.limits import Limits
from agent.service.observability import Metrics


def _from_state(name: str) -> Callable[[Request], Awaitable[Any]]:
    """A dependency that hands over ``app.state.<name>``. A coroutine: it runs on the event loop, not in the
    threadpool. Each is its own function, so tests can override one the FastAPI way."""

    async def dependency(request: Request) -> Any:
        return getattr(request.app.state, name)

    dependency.__name__ = f"get_{name}"
    return dependency


get_settings = _from_state("settings")
get_agent = _from_state("agent")
get_store = _from_state("store")
get_limits = _from_state("limits")
get_metrics = _from_state("metrics")
get_backends = _from_state("backends")


SettingsDep = Annotated[Settings, Depends(get_settings)]
AgentDep = Annotated[SupportAgent, Depends(get_agent)]
StoreDep = Annotated[Store, Depends(get_store)]
LimitsDep = Annotated[Limits, Depends(get_limits)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
BackendsDep = Annotated[Backends, Depends(get_backends)]


def get_caller(request: Request, store: StoreDep) -> auth.Caller:
    """The caller named by the request's bearer key (401 without a valid one); a plain function, so FastAPI runs its
    database look-up in the threadpool."""
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise APIError(401, "missing API key: send 'Authorization: Bearer <key>'", "missing_api_key",
                       headers={"WWW-Authenticate": "Bearer"})
    found = auth.authenticate(store, key.strip())
    if found is None:
        raise APIError(401, "invalid API key", "invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
    request.state.caller = found.name  # for the access log
    return found


CallerDep = Annotated[auth.Caller, Depends(get_caller)]


@cache
def require_role(role: str) -> Callable[..., object]:
    """The dependency that admits callers with ``role`` or above (403 otherwise). One per role, so that an override of
    it (or of ``get_caller`` under it) reaches every route that needs that role."""

    async def check(who: CallerDep) -> auth.Caller:
        if not who.can(role):
            raise APIError(403, f"this needs the {role} role; key {who.name!r} has {who.role}", "insufficient_role")
        return who

    check.__name__ = check.__qualname__ = f"require_{role}"
    return check


AgentCaller = Annotated[auth.Caller, Depends(require_role("agent"))]
OperatorCaller = Annotated[auth.Caller, Depends(require_role("operator"))]
AdminCaller = Annotated[auth.Caller, Depends(require_role("admin"))]
