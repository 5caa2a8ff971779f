"""Canary promotion, composed: an approved version serves a share of new conversations (``tuning.canary`` moves the
registry; replicas route by ``affinage.core.canary_split``), and this module compares the arms live on the signals
the service records (``agent.canary_outcomes``) with an always-valid sequential test (``affinage.core.sequential``),
so the worker may look as often as it likes without inflating false alarms.

On harm the canary is rolled back at once and its version rejected, with the figures in the audit log; with enough
evidence of no harm it steps up through ``canary_steps`` and then becomes the active version (``canary_auto_advance``);
an operator can stop, advance or roll back by hand at any time (CLI, console)."""

from __future__ import annotations

import logging
from datetime import datetime

from affinage.core import sequential
from affinage.core.settings import Settings
from affinage.core.store import Store
from agent.canary_outcomes import conversations
from tuning import canary as moves
from tuning.registry import BASE, Registry, RegistryError
from tuning.registry_poller import RegistryPoller

log = logging.getLogger("affinage.canary")
POLICY = "policy:canary"
OUTCOME_EVENTS = ("canary_rolled_back", "canary_stopped", "promoted")


def rules(settings: Settings) -> dict:
    return {"steps": list(settings.canary_steps), "min_conversations": settings.canary_min_conversations,
            "max_degradation": settings.canary_max_degradation, "alpha": settings.canary_alpha,
            "auto_advance": settings.canary_auto_advance, "signals": list(sequential.SIGNALS)}


def next_share(settings: Settings, canary: dict | None) -> int:
    """The next of ``canary_steps`` above the canary's share; 100 (the version becomes active) after the last."""
    share = canary["share"] if canary else 0
    return next((step for step in settings.canary_steps if step > share), 100)


def advance(settings: Settings, registry: Registry, share: int | None, actor: str) -> dict | None:
    """Step the running canary up by hand to ``share`` (None: the next of ``canary_steps``; 100: make it active)."""
    return moves.set_share(registry, share or next_share(settings, moves.current(registry)), actor)


def evaluate(settings: Settings, store: Store, canary: dict) -> tuple[sequential.Decision, list]:
    """The test's decision on the conversations since the canary began, and those conversations in order."""
    seen, at_step = conversations(store, datetime.fromisoformat(canary["started_at"]),
                                  datetime.fromisoformat(canary["step_started_at"]))
    active, candidate = sequential.tally(seen)
    recent = sequential.tally(seen[at_step:])
    decision = sequential.decide(active, candidate, share=canary["share"], steps=settings.canary_steps,
                                 min_conversations=settings.canary_min_conversations,
                                 max_degradation=settings.canary_max_degradation, alpha=settings.canary_alpha,
                                 since_step=(recent[0].conversations, recent[1].conversations))
    return decision, seen


def check(settings: Settings, store: Store, registry: Registry, actor: str = POLICY) -> dict | None:
    """Look at the running canary once and act on the test: roll back on harm; advance or promote when the policy
    allows. Returns the decision's figures, or None when no canary runs. A move another process made first (an
    operator, a second worker) wins; this look then changes nothing and the next one sees the new state."""
    canary = moves.current(registry)
    if canary is None:
        return None
    decision, _ = evaluate(settings, store, canary)
    found = decision.as_dict()
    try:
        if decision.action == "rollback":
            moves.roll_back(registry, actor, decision.reason, found)
            log.warning("canary rolled back: users fared worse", extra={"version": canary["version"],
                                                                      "reason": decision.reason})
        elif decision.action in ("advance", "promote") and settings.canary_auto_advance:
            moves.set_share(registry, decision.share, actor, found)
            log.info("canary advanced", extra={"version": canary["version"], "share": decision.share})
    except RegistryError as error:
        log.info("canary moved by someone else first", extra={"version": canary["version"], "error": str(error)})
    return found


def status(settings: Settings, store: Store, registry: Registry) -> dict:
    """What the console and `affinage canary status` show: the running canary (or None), the test's decision with
    every signal's rates and interval, its path over the conversations so far, the rules, and the last outcome."""
    canary = moves.current(registry)
    last = next((e for e in reversed(registry.events()) if e["action"] in OUTCOME_EVENTS
                 and (e["action"] != "promoted" or e.get("via") == "canary")), None)
    result = {"canary": None, "decision": None, "trajectory": [], "rules": rules(settings), "last": last,
              "active": registry.active_id() or BASE}
    if canary is not None:
        decision, seen = evaluate(settings, store, canary)
        path = sequential.trajectory(seen, max_degradation=settings.canary_max_degradation, alpha=settings.canary_alpha)
        result.update(canary=canary, decision=decision.as_dict(), trajectory=[point.as_dict() for point in path])
    return result


class CanaryMonitor(RegistryPoller):
    """The worker's watch over a running canary: ``check`` every ``canary_check_seconds`` on its own thread, so a
    long training job does not delay a rollback."""

    thread_name = "canary-monitor"

    def __init__(self, settings: Settings, store: Store, registry: Registry):
        super().__init__(settings.canary_check_seconds)
        self.settings, self.store, self.registry = settings, store, registry

    def check(self) -> bool:
        before = moves.current(self.registry)
        check(self.settings, self.store, self.registry)
        return moves.current(self.registry) != before
