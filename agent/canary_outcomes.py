"""What a running canary's live comparison counts, read from the interaction log: each conversation since the canary
began, the arm that answered it, and the bad outcomes it had (the signals the service already records).

The unit is the conversation, the unit the arms are assigned by, so outcomes are independent between units; a
conversation is bad on a signal when any of its turns is."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select

from affinage.core.sequential import SIGNALS as GUARDED
from affinage.core.store import Store
from affinage.core.tables import Interaction


def conversations(store: Store, since: datetime) -> list[tuple[str, frozenset[str]]]:
    """``[(arm, bad signals)]`` for every conversation a canary arm answered since ``since``, in the order they began."""
    query = (select(Interaction.id, Interaction.conversation_id, Interaction.arm, Interaction.signals,
                    Interaction.abstained)
             .where(Interaction.arm.is_not(None), Interaction.created_at >= since)
             .order_by(Interaction.created_at, Interaction.id))
    arms: dict[str, str] = {}
    bad: dict[str, set[str]] = {}
    with store.session() as session:
        for row_id, conversation, arm, signals, abstained in session.execute(query):
            key = conversation or row_id
            arms.setdefault(key, arm)  # its first turn's arm: a conversation keeps its arm
            found = bad.setdefault(key, set())
            found.update(s["kind"] for s in signals or () if s.get("kind") in GUARDED)
            if abstained:
                found.add("abstained")
    return [(arms[key], frozenset(bad[key])) for key in arms]
