"""What a running canary's live comparison counts, read from the interaction log: each conversation since the canary
began, the arm that answered it, and the bad outcomes it had (the signals the service already records).

The unit is the conversation, the unit the arms are assigned by, so outcomes are independent between units; a
conversation is bad on a signal when any of its turns is."""

from __future__ import annotations

from bisect import bisect_left
from datetime import datetime

from sqlalchemy import select

from affinage.core.sequential import SIGNALS as GUARDED
from affinage.core.store import Store
from affinage.core.tables import Interaction
from affinage.core.timeutil import as_utc


def conversations(store: Store, since: datetime,
                  step_since: datetime) -> tuple[list[tuple[str, frozenset[str]]], int]:
    """``[(arm, bad signals)]`` for every conversation a canary arm answered since ``since``, in the order they began,
    and the index of the first that began at or after ``step_since`` (the conversations at the current share)."""
    query = (select(Interaction.id, Interaction.conversation_id, Interaction.arm, Interaction.signals,
                    Interaction.abstained, Interaction.created_at)
             .where(Interaction.arm.is_not(None), Interaction.created_at >= since)
             .order_by(Interaction.created_at, Interaction.id))
    arms: dict[str, str] = {}
    bad: dict[str, set[str]] = {}
    began: list = []  # each conversation's first turn, in order: the same order as ``arms``
    with store.session() as session:
        for row_id, conversation, arm, signals, abstained, at in session.execute(query):
            key = conversation or row_id
            if key not in arms:  # its first turn's arm: a conversation keeps its arm
                arms[key] = arm
                began.append(at)
            found = bad.setdefault(key, set())
            found.update(s["kind"] for s in signals or () if s.get("kind") in GUARDED)
            if abstained:
                found.add("abstained")
    return [(arms[key], frozenset(bad[key])) for key in arms], bisect_left(began, as_utc(step_since))
