"""Feedback on an answer, stored with the failure signals it implies, in one transaction."""

from __future__ import annotations

from dataclasses import asdict

from sqlalchemy import select

from affinage.core.store import Store
from affinage.core.tables import Feedback, Interaction
from agent.detectors import correction_submitted, thumbs_down

_FEEDBACK_KINDS = ("thumbs_down", "correction_submitted")


class UnknownInteraction(LookupError):
    pass


class NotYourInteraction(PermissionError):
    pass


def record_feedback(store: Store, interaction_id: str, rating: str, correction: str | None = None,
                    comment: str | None = None, user: str | None = None, owner_only: bool = False) -> Feedback:
    """Store one feedback row and refresh the interaction's feedback signals from all its feedback.

    With ``owner_only`` (the API, for callers below operator) only the user the interaction answered may judge it,
    so nobody can put "corrections" of someone else's conversation into the operator's queue.
    """
    with store.session() as session:
        # The row lock serialises feedback on one interaction: without it, two writers on PostgreSQL each recompute
        # the signals from the feedback they can see, and the later one drops the other's (SQLite has one writer).
        interaction = session.get(Interaction, interaction_id, with_for_update=True)
        if interaction is None:
            raise UnknownInteraction(f"no interaction with id {interaction_id!r}")
        if owner_only and interaction.user != user:
            raise NotYourInteraction(f"interaction {interaction_id!r} answered another user; only that user or an "
                                     "operator may give feedback on it")
        row = Feedback(interaction_id=interaction_id, rating=rating, correction=correction, comment=comment, user=user,
                       customer=interaction.customer)  # so an erasure by customer finds it too
        session.add(row)
        session.flush()
        earlier = session.execute(select(Feedback.rating, Feedback.correction)
                                  .where(Feedback.interaction_id == interaction_id)).all()
        fired = [thumbs_down([r for r, _ in earlier]), correction_submitted([c for _, c in earlier])]
        automatic = [s for s in interaction.signals or [] if s["kind"] not in _FEEDBACK_KINDS]
        interaction.signals = [asdict(s) for s in fired if s is not None] + automatic
    return row
