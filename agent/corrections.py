"""Operator review of submitted corrections: an approved one joins the example bank at once, scrubbed of PII."""

from __future__ import annotations

from sqlalchemy import select, update

from affinage.core.pii import redact_pii
from affinage.core.store import Store
from affinage.core.tables import Example, Feedback, Interaction
from affinage.core.timeutil import utcnow


class UnknownCorrection(LookupError):
    pass


class AlreadyReviewed(ValueError):
    """Someone else reviewed the correction first (the service answers 409)."""


def pending_corrections(store: Store) -> list[tuple[Feedback, Interaction]]:
    """Corrections not yet reviewed, oldest first."""
    with store.session() as session:
        rows = session.execute(
            select(Feedback, Interaction).join(Interaction, Feedback.interaction_id == Interaction.id)
            .where(Feedback.correction.is_not(None), Feedback.review.is_(None))
            .order_by(Feedback.created_at)
        ).all()
    return [(feedback, interaction) for feedback, interaction in rows]


def correction_info(feedback: Feedback, interaction: Interaction) -> dict:
    """A pending correction as the operator sees it (API and CLI alike)."""
    return {"id": feedback.id, "interaction_id": interaction.id, "question": interaction.question,
            "answer": interaction.answer, "correction": feedback.correction, "comment": feedback.comment,
            "submitted_by": feedback.user, "created_at": feedback.created_at.isoformat()}


def review_correction(store: Store, feedback_id: str, approve: bool, reviewer: str) -> Example | None:
    """Approve (into the example bank, PII redacted) or reject one pending correction, in one transaction.

    The review is claimed by a conditional UPDATE, the transaction's first statement, and the example is added in the
    same transaction: of reviewers racing on one correction exactly one wins (SQLite's write lock, PostgreSQL's row
    lock and re-check), the others get AlreadyReviewed, and the bank holds an example only if the review says approved.
    """
    with store.session() as session:
        claimed = session.execute(
            update(Feedback)
            .where(Feedback.id == feedback_id, Feedback.review.is_(None), Feedback.correction.is_not(None))
            .values(review="approved" if approve else "rejected", reviewed_by=reviewer, reviewed_at=utcnow())
            .execution_options(synchronize_session=False))
        feedback = session.get(Feedback, feedback_id)
        if claimed.rowcount != 1:
            if feedback is None or feedback.correction is None:
                raise UnknownCorrection(f"no correction with id {feedback_id!r}")
            raise AlreadyReviewed(f"correction {feedback_id!r} was already {feedback.review} by {feedback.reviewed_by}")
        if not approve:
            return None
        interaction = session.get(Interaction, feedback.interaction_id)
        example = Example(
            question=redact_pii(interaction.question)[0],
            answer=redact_pii(feedback.correction)[0],
            source=(interaction.citations or [{}])[0].get("source"),
            origin="correction",
            interaction_id=interaction.id,
            customer=interaction.customer,
            added_by=reviewer,
        )
        session.add(example)
    return example
