"""Failure detectors: small pure functions that say whether, why and how strongly one interaction failed.

Each detector returns a ``Signal`` or ``None``. They read plain values (no database, no model) so they can be
tested against hand-computed numbers and re-run over the whole log when a threshold changes. Anything that needs
a model — a semantic sentence scorer, an embedding similarity — is passed in as a callable.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

SentenceScorer = Callable[[str, Sequence[str]], float]
Similarity = Callable[[str, str], float]

# Kinds in the order detect_all reports them: explicit feedback first, then automatic signals.
KINDS = ("thumbs_down", "correction_submitted", "weak_retrieval", "ungrounded", "refusal", "rephrase", "human_request")


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


def _number(name: str, value: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if math.isnan(number):
        raise ValueError(f"{name} must be a number, got {value!r}")
    return number


def _unit(name: str, value: float) -> float:
    """``value`` as a float in [0, 1], else a ValueError naming it."""
    number = _number(name, value)
    if not 0.0 <= number <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return number


def _open_unit(name: str, value: float) -> float:
    """``value`` as a float in (0, 1]: a threshold of 0 would never fire and divides by zero."""
    number = _number(name, value)
    if not 0.0 < number <= 1.0:
        raise ValueError(f"{name} must be in (0, 1], got {value!r}")
    return number


# --- tokens and text similarity -------------------------------------------------------------------------------

STOPWORDS = frozenset(
    """a about above after again against all am an and any are as at be because been before being below between
    both but by can could did do does doing down during each few for from further had has have having he her here
    hers herself him himself his how i if in into is it its itself just me more most my myself no nor not now of off
    on once only or other our ours ourselves out over own same she should so some such than that the their theirs
    them themselves then there these they this those through to too under until up very was we were what when where
    which while who whom why will with would you your yours yourself yourselves
    s t d ll m re ve""".split()
)
_WORD = re.compile(r"[^\W_]+")


def _fold(text: str) -> str:
    """NFKC, lowercase, curly apostrophes made straight: the form every pattern here is written against."""
    return unicodedata.normalize("NFKC", text).lower().replace("\u2019", "'")


def content_tokens(text: str) -> list[str]:
    """Lowercase word tokens without punctuation or stopwords: the words that carry a sentence's claim."""
    return [w for w in _WORD.findall(_fold(text)) if w not in STOPWORDS]


def _jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a and b else 0.0


def _trigrams(text: str) -> set[str]:
    squashed = " ".join(_WORD.findall(_fold(text)))
    return {squashed[i:i + 3] for i in range(len(squashed) - 2)} or ({squashed} if squashed else set())


def text_similarity(a: str, b: str) -> float:
    """The larger of content-token Jaccard and character-trigram Jaccard, in [0, 1].

    Tokens catch a rephrase that swaps function words ("how do I" / "how can I"); trigrams catch changed word
    forms ("reset" / "resetting") and typos. Taking the larger keeps either kind of rewording from hiding a retry.
    """
    return max(_jaccard(set(content_tokens(a)), set(content_tokens(b))), _jaccard(_trigrams(a), _trigrams(b)))


# --- refusals ---------------------------------------------------------------------------------------------------

# Each pattern is matched case-insensitively with word boundaries on the folded text (curly apostrophes straight).
REFUSAL_PATTERNS: tuple[tuple[str, str], ...] = (
    # "I don't know", "I do not know", but not "I don't know why ..." (puzzlement, usually followed by an answer).
    ("I don't know", r"\bi (?:do not|don't|dont) know\b(?! why\b)"),
    ("I'm not sure", r"\bi(?:'m| am) (?:not (?:sure|certain)|unsure)\b"),
    ("I have no idea", r"\bi (?:have no|don't have an?|do not have an?) (?:idea|answer)\b"),
    # "I cannot help / answer / find ...", "I'm unable to assist", "I couldn't find ..."
    ("I cannot help", r"\bi(?: cannot| can't| can not| could not| couldn't|'m unable to| am unable to|'m not able to"
                      r"| am not able to) (?:help|answer|assist|find|provide|say|tell)\b"),
    # "I have no information", "there is no information", "I don't have (any|enough) information"
    ("no information", r"\b(?:(?:i|we) (?:have|had|found|could find) no |there(?: is|'s) no "
                       r"|(?:don't|do not) have (?:any |enough )?)(?:\w+ )?information\b"),
    # "not covered in the knowledge base", "not mentioned in the passages" — the sources, not a warranty or a plan.
    ("not covered", r"\bnot (?:\w+ )?(?:covered|mentioned|addressed|documented|described) (?:in|by) (?:the |our |these "
                    r"|this |my )?(?:provided )?(?:knowledge base|documentation|docs|passages?|context|sources?"
                    r"|articles?|information)\b"),
    # "the passages do not mention ...", "the knowledge base doesn't cover ...", "the context contains no ..."
    ("sources are silent", r"\b(?:passages?|context|knowledge base|documentation|docs|sources?|articles?) (?:does not"
                           r"|doesn't|do not|don't) (?:contain|include|mention|cover|provide|say|specify)\b"),
    ("outside my scope", r"\b(?:outside|beyond) (?:the scope|my (?:knowledge|scope))\b"),
)
_REFUSALS = tuple((label, re.compile(pattern)) for label, pattern in REFUSAL_PATTERNS)
# A refusal phrase followed in its sentence by "but ..." is a hedge before an answer ("I'm not sure, but press X")
# — unless what follows "but" only offers a hand-over ("..., but I can escalate this to a human agent").
_PIVOT = re.compile(r"\b(?:but|however|though|although)\b")
_ESCALATION_OFFER = re.compile(r"\b(?:escalat\w*|human|agent|team|someone|somebody|colleague|contact support)\b")


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+|\n+", text) if s.strip()]


def _refusal_in(sentence: str) -> str | None:
    folded = _fold(sentence)
    for label, pattern in _REFUSALS:
        for match in pattern.finditer(folded):
            pivot = _PIVOT.search(folded, match.end())
            if pivot is None or _ESCALATION_OFFER.search(folded, pivot.end()):
                return label
    return None


def refusal(answer: str) -> Signal | None:
    """The answer declines to answer ("I don't know", "not covered in the knowledge base", ...).

    Rules: a phrase from ``REFUSAL_PATTERNS`` counts unless the rest of its sentence pivots with "but"/"however"
    to an answer (a hedge); "I don't know why ..." is never a refusal. Strength 1.0 when the answer opens with the
    refusal (nothing was answered), 0.5 when it comes later (part of the question was answered first).
    """
    for position, sentence in enumerate(_sentences(answer)):
        label = _refusal_in(sentence)
        if label is not None:
            return Signal("refusal", f'the answer says "{label}": {sentence[:120]}', 1.0 if position == 0 else 0.5)
    return None


# --- groundedness -----------------------------------------------------------------------------------------------

# Citation markers carry no claim: [1], [1, 2], [billing/refunds.md#annual-plans], [faq.html], [source: x].
_CITATION = re.compile(r"\s*\[(?:\d+(?:\s*[,-]\s*\d+)*|[^\[\]\s]*[#/.][^\[\]\s]*|sources?:[^\]]*)\]", re.IGNORECASE)
MIN_CLAIM_TOKENS = 3


def claim_sentences(answer: str, min_tokens: int = MIN_CLAIM_TOKENS) -> list[str]:
    """The sentences of an answer that assert something the passages should support.

    Citation markers are removed; fragments with fewer than ``min_tokens`` content tokens ("Yes.", "1."),
    questions ("Would you like me to escalate?") and refusals assert nothing about the passages and are skipped.
    """
    if min_tokens < 1:
        raise ValueError(f"min_tokens must be at least 1, got {min_tokens!r}")
    claims = []
    for sentence in _sentences(_CITATION.sub("", answer)):
        sentence = " ".join(sentence.split())
        if sentence.endswith("?") or len(content_tokens(sentence)) < min_tokens or _refusal_in(sentence):
            continue
        claims.append(sentence)
    return claims


def lexical_support(sentence: str, passages: Sequence[str]) -> float:
    """Best fraction, over passages, of the sentence's distinct content tokens that the passage contains.

    0.0 with no passages (a claim with nothing behind it is unsupported); 1.0 for a sentence with no content
    tokens (it claims nothing).
    """
    claim = set(content_tokens(sentence))
    if not claim:
        return 1.0
    return max((len(claim & set(content_tokens(p))) / len(claim) for p in passages), default=0.0)


def sentence_support(answer: str, passages: Sequence[str],
                     scorer: SentenceScorer = lexical_support) -> list[tuple[str, float]]:
    """Each claim sentence of the answer with its support score, for reports and for ``groundedness``."""
    return [(s, _unit(f"support score of {s!r}", scorer(s, passages))) for s in claim_sentences(answer)]


def groundedness(answer: str, passages: Sequence[str], scorer: SentenceScorer = lexical_support) -> float | None:
    """Mean support of the answer's claim sentences, in [0, 1].

    ``None`` when the answer makes no claim (empty, only a refusal, only a question or fragments): such an
    answer is neither grounded nor ungrounded, and scoring it 1.0 would let abstentions pass as good
    training targets. Other detectors (``refusal``) speak for those answers.
    """
    scores = [score for _, score in sentence_support(answer, passages, scorer)]
    return sum(scores) / len(scores) if scores else None


def ungrounded(answer: str, passages: Sequence[str], sentence_scorer: SentenceScorer = lexical_support,
               threshold: float = 0.5) -> Signal | None:
    """The answer says things its retrieved passages do not support; strength = 1 - groundedness."""
    threshold = _unit("groundedness threshold", threshold)
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
    threshold = _open_unit("retrieval threshold", threshold)
    if top_score is None:
        return Signal("weak_retrieval", "knowledge gap: nothing was retrieved", 1.0)
    top_score = _number("top retrieval score", top_score)
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
    threshold = _unit("rephrase similarity threshold", threshold)
    if not _number("rephrase window", window_s) > 0:
        raise ValueError(f"rephrase window must be positive seconds, got {window_s!r}")
    best: tuple[float, str, float] | None = None
    for text, asked_at in earlier:
        if not 0 <= now - asked_at <= window_s:
            continue
        score = _unit(f"similarity of {text!r}", similarity(question, text))
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
    folded = " ".join(_fold(question).split())
    for pattern in _HUMAN_REQUESTS:
        match = pattern.search(folded)
        if match:
            return Signal("human_request", f'the user asks for a person: "{match.group(0)}"', 1.0)
    return None


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
        _open_unit("retrieval_threshold", self.retrieval_threshold)
        _unit("groundedness_threshold", self.groundedness_threshold)
        _unit("rephrase_threshold", self.rephrase_threshold)
        if not _number("rephrase_window_s", self.rephrase_window_s) > 0:
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
    )
    return [signal for signal in signals if signal is not None]
