"""The registry's canary moves: an approved version serves a share of conversations beside the active one, steps up,
and then becomes the active version (share 100), is paused (stop) or is rolled back (rejected).

The running canary is the pointer row's ``canary`` column (``{"version", "share", "started_at", "step_started_at",
"actor"}``, NULL when none runs). Every move here is one compare-and-set of the pointer's generation with its audit
event (``Registry._move_pointer``), so of a rollback and a share change made from the same read, one wins and the other
gets a RegistryError; a rollback rejects the version in that same transaction.
"""

from __future__ import annotations

from affinage.core.tables import RegistryVersion
from tuning.registry import Registry
from tuning.versions import RegistryError, finite, now, promotion

CANARY_FLAG = "canary"  # Version.flags[CANARY_FLAG]: how its canary ended, when it was rolled back


def current(registry: Registry) -> dict | None:
    """The running canary, or None."""
    return registry.pointer_state()["canary"]


def start(registry: Registry, version_id: str, share: int, actor: str) -> dict:
    """Start serving ``version_id`` to ``share`` percent of conversations (1..99); returns the new canary."""
    _check_share(share, "a canary starts at a share of 1 to 99 percent of conversations", 1, 99)
    pointer = registry.pointer_state()
    version = registry.get(version_id, pointer)
    if version.state == "active":
        raise RegistryError(f"version {version_id} is already active: a canary is for a version that is not serving")
    if running := pointer["canary"]:
        raise RegistryError(f"a canary of version {running['version']} is already running at {running['share']}%: "
                            "finish, stop or roll it back before starting another")
    if version.lifecycle != "approved":
        hint = ("approve it first" if version.state == "gated-passed"
                else "only an approved version can start a canary")
        raise RegistryError(f"version {version_id} is {version.state}: {hint}")
    registry.verify(version_id)
    at = now()
    canary = {"version": version_id, "share": share, "started_at": at, "step_started_at": at, "actor": actor}
    registry._move_pointer(pointer, {"canary": canary}, "canary_started", version_id, actor, {"share": share})
    return canary


def set_share(registry: Registry, share: int, actor: str, figures: dict | None = None) -> dict | None:
    """Step the running canary up to ``share`` percent; 100 finishes it: its version becomes the active one (a
    promotion, event "promoted" with ``via: canary``) and None is returned, else the canary as it is now."""
    pointer = registry.pointer_state()
    canary = _running(pointer, "change its share")
    _check_share(share, f"the canary of version {canary['version']} is at {canary['share']}%: a new share must be "
                        "above it and at most 100 (which finishes it)", canary["share"] + 1, 100)
    figures, version_id = finite(dict(figures or {})), canary["version"]
    if share == 100:
        new = promotion(pointer, version_id)
        registry.verify(version_id)
        registry._move_pointer(pointer, new, "promoted", version_id, actor,
                               {"previous": pointer["active"], "via": "canary", "figures": figures})
        return None
    moved = {**canary, "share": share, "step_started_at": now()}
    registry._move_pointer(pointer, {"canary": moved}, "canary_advanced", version_id, actor,
                           {"from": canary["share"], "to": share, "figures": figures})
    return moved


def stop(registry: Registry, actor: str, comment: str) -> None:
    """Pause the running canary: no conversation goes to it any more; its version stays approved (it may start again)."""
    if not (comment or "").strip():
        raise RegistryError("stopping a canary needs a comment saying why")
    pointer = registry.pointer_state()
    canary = _running(pointer, "stop")
    registry._move_pointer(pointer, {"canary": None}, "canary_stopped", canary["version"], actor,
                           {"comment": comment.strip(), "share": canary["share"]})


def roll_back(registry: Registry, actor: str, reason: str, figures: dict | None = None) -> str:
    """End the running canary and reject its version (``flags["canary"]`` says why, with the ``figures``), in one
    transaction; returns the version."""
    if not (reason or "").strip():
        raise RegistryError("rolling back a canary needs a reason")
    pointer = registry.pointer_state()
    canary = _running(pointer, "roll back")
    version_id, figures, reason = canary["version"], finite(dict(figures or {})), reason.strip()
    flag = {"outcome": "rolled_back", "reason": reason, "figures": figures, "at": now(), "actor": actor,
            "share": canary["share"]}

    def reject(session) -> None:
        row = session.get(RegistryVersion, version_id, with_for_update=True)
        if row.state != "approved":  # only a rollback moves an approved version on, and it moves the pointer too
            raise RegistryError(f"version {version_id} is {row.state}, not approved: look at it again")
        row.state, row.flags = "rejected", {**(row.flags or {}), CANARY_FLAG: flag}

    registry._move_pointer(pointer, {"canary": None}, "canary_rolled_back", version_id, actor,
                           {"reason": reason, "figures": figures, "share": canary["share"]}, also=reject)
    return version_id


def _running(pointer: dict, doing: str) -> dict:
    if not pointer["canary"]:
        raise RegistryError(f"no canary is running to {doing}")
    return pointer["canary"]


def _check_share(share, rule: str, low: int, high: int) -> None:
    if isinstance(share, bool) or not isinstance(share, int) or not low <= share <= high:
        raise RegistryError(f"{rule}, not {share!r}")
