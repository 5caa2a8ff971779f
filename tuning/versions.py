"""What the registry records about a version, apart from the database and the folder: the ``Version`` record and
its lifecycle states, the errors a refused registry operation raises, strict-JSON cleaning, and which versions
learnt from erased datasets (directly, or by continuing an adapter that did)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from affinage.core.tables import RegistryEvent

BASE = "base"  # the version name of the bare base model
LIFECYCLE = ("candidate", "gated-passed", "gated-failed", "approved", "rejected", "superseded")
# superseded: another candidate of the same search was proposed instead; it is never approved or promoted
GATEABLE = ("candidate", "gated-passed", "gated-failed")
PROMOTABLE = ("gated-passed", "approved")
ERASED_FLAG = "trained_on_erased_data"


class RegistryError(ValueError):
    """A refused registry operation; the message says why."""


class UnknownVersion(RegistryError):
    """No version by that id."""


@dataclass
class Version:
    id: str
    state: str  # the lifecycle state, or active/retired as the pointer says
    manifest: dict
    path: Path
    lifecycle: str  # the last lifecycle state, kept after retirement
    gate: dict | None  # the gate verdict: {"passed", "at", ...}
    flags: dict | None = None  # {"trained_on_erased_data": {"datasets", "erasure", "at"}} (``flag_trained_on_erased``)
    canary: dict | None = None  # the running canary when it is of this version (``tuning.canary``)

    @property
    def trained_on_erased(self) -> dict | None:
        """The erasure flag, or None: the version learnt from data a customer had erased since."""
        return (self.flags or {}).get(ERASED_FLAG)

    def to_json(self) -> dict:
        metrics = self.manifest.get("metrics", {})
        return {"id": self.id, "state": self.state, "method": self.manifest.get("method"),
                "created_at": self.manifest.get("created_at"), "datasets": [d["id"] for d in self.manifest.get("datasets", [])],
                "config": config_summary(self.manifest.get("config") or {}),
                "metrics": metrics, "gate": self.gate, "flags": self.flags or {},
                "trained_on_erased_data": self.trained_on_erased is not None,
                "canary": {k: v for k, v in self.canary.items() if k != "version"} if self.canary else None}


def config_summary(config: dict) -> dict:
    """The knobs a search varies most, for comparing candidates side by side (steps: -1 means by epochs)."""
    keys = ("learning_rate", "max_steps" if config.get("max_steps", -1) > 0 else "epochs", "lora_r", "target_modules")
    return {k: config[k] for k in keys if config.get(k) is not None}


def now() -> str:
    return datetime.now(timezone.utc).isoformat()


def finite(value):
    """``value`` with NaN and infinities as None: strict JSON, which PostgreSQL requires and which compares equal
    to itself (a diverged run's loss curve holds NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def canary_of(pointer: dict, version_id: str) -> dict | None:
    """The running canary in ``pointer`` if it is of ``version_id``."""
    canary = pointer.get("canary")
    return canary if canary and canary["version"] == version_id else None


def promotion(pointer: dict, version_id: str) -> dict:
    """The pointer's new columns when ``version_id`` becomes the active version; a running canary of it ends with it,
    one of another version refuses it (one of the two must end first)."""
    canary = pointer.get("canary")
    if canary and canary["version"] != version_id:
        raise RegistryError(f"a canary of version {canary['version']} is running at {canary['share']}%: finish it "
                            f"(share 100) or stop it first, before promoting {version_id}")
    return {"active": version_id, "history": [*pointer["history"], pointer["active"]],
            "ever_active": sorted({*pointer["ever_active"], version_id}), "canary": None}


def move_details(pointer: dict) -> dict:
    """The details of a promotion or rollback from ``pointer``: the version it replaces, and the canary it ended."""
    canary = pointer.get("canary")
    return {"previous": pointer["active"], **({"canary_cleared": canary} if canary else {})}


def event_json(row: RegistryEvent) -> dict:
    return {"at": row.at.isoformat(), "action": row.action, "version": row.version, "actor": row.actor, **row.details}


def erased_lineage(versions: list[Version], erased: set[str]) -> tuple[dict[str, set[str]], dict[str, str]]:
    """Which of ``versions`` (oldest first) hold one of the ``erased`` datasets in their weights: trained on it, or
    continuing (``start_from``) a version that does. Returns version -> those datasets, and version -> the parent
    it inherited them from (for versions that were not trained on them directly)."""
    learnt: dict[str, set[str]] = {}
    via: dict[str, str] = {}
    for version in versions:  # oldest first, so a version's start comes before it
        direct = {d["id"] for d in version.manifest.get("datasets", [])} & erased
        parent = version.manifest.get("start_from")
        inherited = learnt.get(parent, set()) if parent not in (None, BASE) else set()
        if direct or inherited:
            learnt[version.id] = direct | inherited
            if inherited and not direct:
                via[version.id] = parent
    return learnt, via
