"""What triage works on, as plain values: a failed interaction with its feedback, and a fix already applied.

Plain values so that statistics and remedy rules can be tested against hand-made cases; ``reading`` builds them from
the log.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

# Feedback comments that complain about how something was said rather than what: a behaviour, not a fact.
STYLE_COMPLAINT = re.compile(
    r"\b(?:tone|rude|impolite|condescending|unfriendly|robotic|formal|informal|format(?:ting|ted)?|markdown|bullet"
    r"(?:s| points?)?|too (?:long|short|verbose|wordy|terse|brief)|verbose|wordy|rambl\w*|repetitive|repeats? "
    r"itself|grammar|spelling|wrong language)\b",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Failure:
    """One failed interaction and its feedback, as plain values (what ``triage`` reads from the log)."""

    interaction_id: str
    question: str
    created_at: datetime
    user: str | None = None
    abstained: bool = False
    signals: Sequence[Mapping] = ()  # [{"kind", "reason", "strength"}]
    retrieved: Sequence[Mapping] = ()  # [{"chunk_id", "source", "score"}], best first
    ratings: Sequence[str] = ()  # "up" | "down", one per feedback row
    corrections: Sequence[str] = ()  # non-empty corrections from feedback
    comments: Sequence[str] = ()  # non-empty feedback comments

    @property
    def kinds(self) -> frozenset[str]:
        return frozenset(s.get("kind") for s in self.signals if s.get("kind"))

    @property
    def top_score(self) -> float | None:
        scores = [float(r["score"]) for r in self.retrieved if r.get("score") is not None]
        return max(scores, default=None)

    @property
    def weak(self) -> bool:
        """No good passage: weak retrieval, an abstention, or nothing retrieved at all."""
        return "weak_retrieval" in self.kinds or self.abstained or not self.retrieved

    @property
    def negative(self) -> bool:
        return bool(self.kinds & {"thumbs_down", "correction_submitted"}) or "down" in self.ratings

    @property
    def corrected(self) -> bool:
        return "correction_submitted" in self.kinds or any(c.strip() for c in self.corrections)

    @property
    def style_complaint(self) -> bool:
        return any(STYLE_COMPLAINT.search(c) for c in self.comments)

    @property
    def behaviour(self) -> bool:
        """How it was answered went wrong: invented facts, a refusal, or a complaint about tone or format."""
        return bool(self.kinds & {"ungrounded", "refusal"}) or self.style_complaint


@dataclass(frozen=True)
class Fix:
    """A correction-derived example in the example bank: the instant remedy, already applied at ``created_at``."""

    created_at: datetime
    question: str
    interaction_id: str | None = None  # the failed interaction whose correction it came from
