"""The admin's erasure route (GDPR art. 17): forget a customer, or check that nothing of them is left.

The work lives in the top layer (``affinage.erasure``: it supersedes datasets and flags registry versions), which the
agent layer must not import; the assembly hands it in (``Backends.erasure``). Reports carry counts and random ids
only."""

from __future__ import annotations

import logging

from fastapi import APIRouter

from agent.erasure import Selector
from agent.service.deps import AdminCaller, AgentDep, BackendsDep
from agent.service.errors import APIError
from agent.service.schemas import ForgetRequest

log = logging.getLogger("affinage.service")
SELECTORS = tuple(name for name in ForgetRequest.model_fields if name != "check")
router = APIRouter(prefix="/api/admin", tags=["admin"])


@router.post("/forget")
def forget_route(body: ForgetRequest, who: AdminCaller, agent: AgentDep, backends: BackendsDep) -> dict:
    """Erase everything one selector names (or, with ``check``, count what is left): admins only."""
    given = {kind: getattr(body, kind) for kind in SELECTORS if getattr(body, kind) is not None}
    try:
        chosen = Selector(**given)
    except ValueError as error:
        param = next(iter(given), None) if len(given) == 1 else None
        raise APIError(400, str(error), "invalid_selector", param) from None
    if body.check:  # the running service's example bank: the check looks into its in-memory cache too
        left = backends.erasure.check(chosen, bank=agent.examples)
        return {"selector": chosen.kind, "selector_hash": chosen.hash, "left": left, "clean": not left}
    report = backends.erasure.forget(chosen, who.name)
    log.info("erasure", extra={"by": who.name, "erasure_id": report["erasure_id"], "selector": chosen.kind,
                               "counts": report["counts"]})
    return report
