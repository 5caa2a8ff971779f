"""Text as the pieces compare it: one folding, one normaliser, tokens, shingles and Jaccard, written once."""

from __future__ import annotations

import re
import unicodedata

from affinage.core.validate import at_least

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


def sentences(text: str) -> list[str]:
    """The text cut after '.', '!' or '?' and at line breaks, blank pieces dropped."""
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


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


def fold(text: str) -> str:
    """NFKC, lowercase, curly apostrophes made straight: the form every pattern here is written against."""
    return unicodedata.normalize("NFKC", text).lower().replace("\u2019", "'")


def content_tokens(text: str) -> list[str]:
    """Lowercase word tokens without punctuation or stopwords: the words that carry a sentence's claim."""
    return [w for w in _WORD.findall(fold(text)) if w not in STOPWORDS]


def trigrams(text: str) -> set[str]:
    squashed = " ".join(_WORD.findall(fold(text)))
    return {squashed[i:i + 3] for i in range(len(squashed) - 2)} or ({squashed} if squashed else set())


def text_similarity(a: str, b: str) -> float:
    """The larger of content-token Jaccard and character-trigram Jaccard, in [0, 1].

    Tokens catch a rephrase that swaps function words ("how do I" / "how can I"); trigrams catch changed word
    forms ("reset" / "resetting") and typos. Taking the larger keeps either kind of rewording from hiding a retry.
    """
    return max(jaccard(set(content_tokens(a)), set(content_tokens(b))), jaccard(trigrams(a), trigrams(b)))


def normalise(text: str) -> str:
    """Case, compatibility forms and punctuation folded away; words separated by single spaces."""
    return " ".join(_WORD.findall(fold(text)))


def shingles(text: str, size: int = 5) -> set[str]:
    """Character ``size``-grams of the normalised text (the whole text when it is shorter)."""
    at_least("shingle size", size, 1)
    flat = normalise(text)
    return {flat[i:i + size] for i in range(len(flat) - size + 1)} or ({flat} if flat else set())


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a and b else 0.0
