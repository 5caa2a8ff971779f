"""Which arm of a canary answers a conversation: a stable hash, so one conversation always sees one version, and a
share that steps up (10 -> 50) keeps every conversation already on the canary there."""

from __future__ import annotations

import hashlib

ARMS = ("active", "canary")


def in_canary(conversation: str, version: str, share: float) -> bool:
    """True when ``conversation`` falls in the ``share`` percent of conversations the canary ``version`` serves.

    The hash is salted with the version, so each canary draws its own conversations; it is uniform on [0, 100)."""
    digest = hashlib.sha256(f"{version}\0{conversation}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * 100 < share


def arm_for(conversation: str, canary: dict | None) -> str | None:
    """"canary" or "active" under the running ``canary`` ({"version", "share", ...}); None when none runs."""
    if not canary:
        return None
    return "canary" if in_canary(conversation, canary["version"], canary["share"]) else "active"
