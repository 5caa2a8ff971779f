"""Failure detectors: small pure functions that say whether, why and how strongly one interaction failed.

Each detector returns a ``Signal`` or ``None``. They read plain values (no database, no model) so they can be
tested against hand-computed numbers and re-run over the whole log when a threshold changes. Anything that needs
a model — a semantic sentence scorer, an embedding similarity — is passed in as a callable.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from affinage.core.grounding import SentenceScorer, lexical_support, sentence_support
from affinage.core.refusal import first_refusal
from affinage.core.text import fold, text_similarity
from affinage.core.validate import number, open_unit, unit

Similarity = Callable[[str, str], float]

# Kinds in the order detect_all reports them: explicit feedback first, then automatic signals.
KINDS = ("thumbs_down", "correction_submitted", "weak_retrieval", "ungrounded", "refusal", "rephrase", "human_request",
         "output_guard")


@dataclass(frozen=True)
class Signal:
    """One reason to believe an answer failed; strength 1 is certain failure, near 0 a faint hint."""

    kind: str
    reason: str
    strength: float

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown signal kind {self.kind!r}; expected one of {', '.join(KINDS)}")
        if not 0.0 <= self.strength <= 1.0:
            raise ValueError(f"signal strength {self.strength!r} is outside [0, 1]")


# --- groundedness -----------------------------------------------------------------------------------------------

def ungrounded(answer: str, passages: Sequence[str], sentence_scorer: SentenceScorer = lexical_support,
               threshold: float = 0.5) -> Signal | None:
    """The answer says things its retrieved passages do not support; strength = 1 - groundedness."""
    threshold = unit("groundedness threshold", threshold)
    support = sentence_support(answer, passages, sentence_scorer)
    if not support:
        return None
    score = sum(s for _, s in support) / len(support)
    if score >= threshold:
        return None
    weakest, weakest_score = min(support, key=lambda pair: pair[1])
    reason = (f"groundedness {score:.2f} < {threshold:.2f} over {len(support)} sentence(s); "
              f'least supported ({weakest_score:.2f}): "{weakest[:120]}"')
    return Signal("ungrounded", reason, 1.0 - score)


# --- refusals ---------------------------------------------------------------------------------------------------

def refusal(answer: str) -> Signal | None:
    """The answer declines to answer (``affinage.core.refusal``). Strength 1.0 when the answer opens with the
    refusal (nothing was answered), 0.5 when it comes later (part of the question was answered first)."""
    found = first_refusal(answer)
    if found is None:
        return None
    position, label, sentence = found
    return Signal("refusal", f'the answer says "{label}": {sentence[:120]}', 1.0 if position == 0 else 0.5)


# --- feedback and retrieval -------------------------------------------------------------------------------------

def thumbs_down(ratings: Sequence[str]) -> Signal | None:
    """Someone rated the answer down; strength = share of down ratings, so a split verdict counts for less."""
    for rating in ratings:
        if rating not in ("up", "down"):
            raise ValueError(f"rating must be 'up' or 'down', got {rating!r}")
    downs = sum(rating == "down" for rating in ratings)
    if not downs:
        return None
    return Signal("thumbs_down", f"{downs} of {len(ratings)} rating(s) are thumbs-down", downs / len(ratings))


def correction_submitted(corrections: Sequence[str | None]) -> Signal | None:
    """Someone wrote the answer that should have been given: the strongest signal there is (strength 1)."""
    written = [c for c in corrections if c and c.strip()]
    if not written:
        return None
    return Signal("correction_submitted", f"{len(written)} correction(s) submitted", 1.0)


def weak_retrieval(top_score: float | None, threshold: float) -> Signal | None:
    """A knowledge gap: the best retrieved passage scored below ``threshold`` (cosine similarity).

    Strength grows linearly from 0 at the threshold to 1 at a score of 0 or less: (threshold - score) / threshold.
    ``None`` as the score means nothing was retrieved at all: strength 1.
    """
    threshold = open_unit("retrieval threshold", threshold)
    if top_score is None:
        return Signal("weak_retrieval", "knowledge gap: nothing was retrieved", 1.0)
    top_score = number("top retrieval score", top_score)
    if top_score >= threshold:
        return None
    strength = min(1.0, (threshold - top_score) / threshold)
    return Signal("weak_retrieval", f"knowledge gap: best passage scored {top_score:.3f} < {threshold:.3f}", strength)


# --- the user's behaviour ---------------------------------------------------------------------------------------

def rephrase(question: str, earlier: Sequence[tuple[str, float]], now: float, window_s: float,
             similarity: Similarity = text_similarity, threshold: float = 0.7) -> Signal | None:
    """The same user asked a similar question at most ``window_s`` seconds before ``now``: the earlier answer
    did not satisfy them.

    ``earlier`` holds that user's other questions as (question, unix seconds); ones after ``now`` are ignored.
    An exact repeat counts too (similarity 1): asking the same thing again is a retry, the plainest sign of a
    bad answer. Strength is the best similarity found. The signal fires on the later interaction; its reason
    names the earlier question, whose answer is the one that failed.
    """
    threshold = unit("rephrase similarity threshold", threshold)
    if not number("rephrase window", window_s) > 0:
        raise ValueError(f"rephrase window must be positive seconds, got {window_s!r}")
    best: tuple[float, str, float] | None = None
    for text, asked_at in earlier:
        if not 0 <= now - asked_at <= window_s:
            continue
        score = unit(f"similarity of {text!r}", similarity(question, text))
        if score >= threshold and (best is None or score > best[0]):
            best = (score, text, now - asked_at)
    if best is None:
        return None
    score, text, gap = best
    return Signal("rephrase", f'similar ({score:.2f}) to "{text[:120]}" asked {gap:.0f}s earlier', score)


# Each pattern is matched case-insensitively with word boundaries on the folded question. "agent", "escalate" and
# "call" are product words in a help desk ("add an agent", "escalate a ticket", "call routing"), so they count only
# in phrasings that ask for a person for this conversation.
HUMAN_REQUEST_PATTERNS: tuple[str, ...] = (
    r"\b(?:talk|speak|chat) (?:to|with) (?:a |an |some |your )?(?:real |actual |live )?"
    r"(?:human|person|someone|somebody|representative|operator)\b",
    r"\b(?:i|me)\b[^.?!]{0,30}\b(?:talk|speak|chat) (?:to|with) (?:a |an |your )?(?:real |actual |live )?"
    r"(?:agent|manager|supervisor)\b",
    r"\b(?:real|actual) (?:human|person|agent)\b",
    r"\b(?:want|need|get me|give me) (?:a |an |to see a )?(?:human|person)\b",
    r"\bhuman,? please\b",
    r"\b(?:please escalate|escalate (?:this|me|my (?:issue|case|question|request|problem|ticket)))\b",
    r"\b(?:connect|transfer|put) me (?:through )?(?:to|with)\b",
    r"\b(?:call|phone|ring) me\b",
    r"\brepresentatives?\b",
    r"\b(?:not|no more|stop|enough of) (?:a |the |this |your )?(?:bot|robot|chatbot|machine)s?\b",
)
_HUMAN_REQUESTS = tuple(re.compile(pattern) for pattern in HUMAN_REQUEST_PATTERNS)


def human_request(question: str) -> Signal | None:
    """The user explicitly asks for a person: the assistant is not serving them (strength 1)."""
    folded = " ".join(fold(question).split())
    for pattern in _HUMAN_REQUESTS:
        match = pattern.search(folded)
        if match:
            return Signal("human_request", f'the user asks for a person: "{match.group(0)}"', 1.0)
    return None


# --- what the customer was not shown ----------------------------------------------------------------------------

GUARD_REASON = "removed before it was shown: "  # then what was removed: the console lists it after this


def output_guard(removed: Sequence[str]) -> Signal | None:
    """The output guards (``agent.link_guard``) changed the served answer: an off-policy link removed, or the answer
    withheld for giving the system prompt away. What they removed is the reason; strength 1, the model misbehaved."""
    if not removed:
        return None
    return Signal("output_guard", GUARD_REASON + ", ".join(dict.fromkeys(r[:120] for r in removed)), 1.0)


# --- all together -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class InteractionView:
    """What the detectors need from one logged interaction and its feedback, as plain values."""

    question: str
    answer: str
    created_at: float  # unix seconds
    retrieved_scores: Sequence[float] = ()  # every retrieved passage's score; empty when nothing was retrieved
    passages: Sequence[str] = ()  # the passages the answer was generated from (cited first)
    ratings: Sequence[str] = ()  # "up" | "down", one per feedback row
    corrections: Sequence[str | None] = ()
    earlier_questions: Sequence[tuple[str, float]] = ()  # the same user's other questions: (question, unix seconds)
    guarded: Sequence[str] = ()  # what the output guards removed from the served answer (links, "system prompt")


@dataclass(frozen=True)
class DetectorConfig:
    """Thresholds for ``detect_all``; scorers are injected so a semantic model can replace the lexical default."""

    retrieval_threshold: float = field(default=0.4, metadata={
        "help": "best-passage score below which an answer is a knowledge gap; a little above the agent's "
                "min_score (0.3) so borderline answers it still attempted are flagged too"})
    groundedness_threshold: float = field(default=0.5, metadata={
        "help": "mean sentence support below which an answer is ungrounded"})
    rephrase_window_s: float = field(default=300.0, metadata={"help": "how soon a similar question counts as a retry"})
    rephrase_threshold: float = field(default=0.7, metadata={"help": "similarity at which two questions are the same"})
    sentence_scorer: SentenceScorer = field(default=lexical_support, metadata={
        "help": "support of one sentence by passages, in [0, 1]"})
    similarity: Similarity = field(default=text_similarity, metadata={"help": "similarity of two questions"})

    def __post_init__(self) -> None:
        open_unit("retrieval_threshold", self.retrieval_threshold)
        unit("groundedness_threshold", self.groundedness_threshold)
        unit("rephrase_threshold", self.rephrase_threshold)
        if not number("rephrase_window_s", self.rephrase_window_s) > 0:
            raise ValueError(f"rephrase_window_s must be positive, got {self.rephrase_window_s!r}")


def detect_all(view: InteractionView, config: DetectorConfig = DetectorConfig()) -> list[Signal]:
    """Every signal that fires for one interaction, in ``KINDS`` order."""
    signals = (
        thumbs_down(view.ratings),
        correction_submitted(view.corrections),
        weak_retrieval(max(view.retrieved_scores, default=None), config.retrieval_threshold),
        ungrounded(view.answer, view.passages, config.sentence_scorer, config.groundedness_threshold),
        refusal(view.answer),
        rephrase(view.question, view.earlier_questions, view.created_at, config.rephrase_window_s,
                 config.similarity, config.rephrase_threshold),
        human_request(view.question),
        output_guard(view.guarded),
    )
    return [signal for signal in signals if signal is not None]
