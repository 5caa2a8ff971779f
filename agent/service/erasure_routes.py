"""The admin's erasure route (GDPR art. 17): forget a customer, or check that nothing of them is left.

The work lives in the top layer (``affinage.erasure``: it supersedes datasets and flags registry versions), which the
agent layer must not import; ``create_app`` hands its functions in. Reports carry counts and random ids only."""

from __future__ import annotations

import logging
from typing import Callable

from fastapi import APIRouter, Depends

from affinage.core.settings import Settings
from agent.service.errors import APIError
from agent.service.schemas import ForgetRequest
from affinage.core.store import Store

log = logging.getLogger("affinage.service")
SELECTORS = tuple(name for name in ForgetRequest.model_fields if name != "check")


def erasure_routes(settings: Settings, store: Store, require: Callable, *, forget: Callable, check: Callable,
                   selector: Callable, bank=None) -> APIRouter:
    """``forget(settings, store, selector, actor)`` and ``check(settings, store, selector, bank=)`` do the work;
    ``selector(**{kind: value})`` builds the selector, raising ValueError (a 400) for none, two or a bad value;
    ``bank`` is the running service's example bank, whose in-memory cache the check looks into."""
    router = APIRouter(prefix="/api/admin", tags=["admin"])

    @router.post("/forget")
    def forget_route(body: ForgetRequest, who=Depends(require("admin"))) -> dict:
        """Erase everything one selector names (or, with ``check``, count what is left): admins only."""
        given = {kind: getattr(body, kind) for kind in SELECTORS if getattr(body, kind) is not None}
        try:
            chosen = selector(**given)
        except ValueError as error:
            param = next(iter(given), None) if len(given) == 1 else None
            raise APIError(400, str(error), "invalid_selector", param) from None
        if body.check:
            left = check(settings, store, chosen, bank=bank)
            return {"selector": chosen.kind, "selector_hash": chosen.hash, "left": left, "clean": not left}
        report = forget(settings, store, chosen, who.name)
        log.info("erasure", extra={"by": who.name, "erasure_id": report["erasure_id"], "selector": chosen.kind,
                                   "counts": report["counts"]})
        return report

    return router
