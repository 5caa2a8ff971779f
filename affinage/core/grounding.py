"""Groundedness: how much of an answer its passages support, sentence by sentence. Pure; a semantic scorer can be
passed in where the lexical one is not enough."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from affinage.core.refusal import refusal_in
from affinage.core.text import content_tokens, sentences
from affinage.core.validate import at_least, unit

SentenceScorer = Callable[[str, Sequence[str]], float]

# Citation markers carry no claim: [1], [1, 2], [billing/refunds.md#annual-plans], [faq.html], [source: x].
_CITATION = re.compile(r"\s*\[(?:\d+(?:\s*[,-]\s*\d+)*|[^\[\]\s]*[#/.][^\[\]\s]*|sources?:[^\]]*)\]", re.IGNORECASE)
MIN_CLAIM_TOKENS = 3


def claim_sentences(answer: str, min_tokens: int = MIN_CLAIM_TOKENS) -> list[str]:
    """The sentences of an answer that assert something the passages should support.

    Citation markers are removed; fragments with fewer than ``min_tokens`` content tokens ("Yes.", "1."),
    questions ("Would you like me to escalate?") and refusals assert nothing about the passages and are skipped.
    """
    at_least("min_tokens", min_tokens, 1)
    claims = []
    for sentence in sentences(_CITATION.sub("", answer)):
        sentence = " ".join(sentence.split())
        if sentence.endswith("?") or len(content_tokens(sentence)) < min_tokens or refusal_in(sentence):
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
    return [(s, unit(f"support score of {s!r}", scorer(s, passages))) for s in claim_sentences(answer)]


def groundedness(answer: str, passages: Sequence[str], scorer: SentenceScorer = lexical_support) -> float | None:
    """Mean support of the answer's claim sentences, in [0, 1].

    ``None`` when the answer makes no claim (empty, only a refusal, only a question or fragments): such an
    answer is neither grounded nor ungrounded, and scoring it 1.0 would let abstentions pass as good
    training targets. Other detectors (``refusal``) speak for those answers.
    """
    scores = [score for _, score in sentence_support(answer, passages, scorer)]
    return sum(scores) / len(scores) if scores else None
