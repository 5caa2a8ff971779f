"""Feedback on an answer, stored with the failure signals it implies, in one transaction."""

from __future__ import annotations

from dataclasses import asdict

from sqlalchemy import select

from agent.detectors import correction_submitted, thumbs_down
from agent.store import Feedback, Interaction, Store

_FEEDBACK_KINDS = ("thumbs_down", "correction_submitted")


class UnknownInteraction(LookupError):
    pass


def record_feedback(store: Store, interaction_id: str, rating: str, correction: str | None = None,
                    comment: str | None = None, user: str | None = None) -> Feedback:
    """Store one feedback row and refresh the interaction's feedback signals from all its feedback."""
    with store.session() as session:
        interaction = session.get(Interaction, interaction_id)
        if interaction is None:
            raise UnknownInteraction(f"no interaction with id {interaction_id!r}")
        row = Feedback(interaction_id=interaction_id, rating=rating, correction=correction, comment=comment, user=user)
        session.add(row)
        session.flush()
        earlier = session.execute(select(Feedback.rating, Feedback.correction)
                                  .where(Feedback.interaction_id == interaction_id)).all()
        fired = [thumbs_down([r for r, _ in earlier]), correction_submitted([c for _, c in earlier])]
        automatic = [s for s in interaction.signals or [] if s["kind"] not in _FEEDBACK_KINDS]
        interaction.signals = [asdict(s) for s in fired if s is not None] + automatic
    return row
