"""Answer and retrieval metrics: pure functions, tested against numbers worked out by hand."""

from __future__ import annotations

import re
import string
from collections import Counter

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans({c: " " for c in string.punctuation})


def tokens(text: str) -> list[str]:
    """SQuAD-style normalisation: lowercase, no punctuation, no articles."""
    return _ARTICLES.sub(" ", text.lower().translate(_PUNCT)).split()


def token_f1(prediction: str, reference: str) -> float:
    pred, ref = tokens(prediction), tokens(reference)
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def _lcs_length(a: list[str], b: list[str]) -> int:
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure over word tokens (longest common subsequence)."""
    pred, ref = tokens(prediction), tokens(reference)
    if not pred or not ref:
        return float(pred == ref)
    lcs = _lcs_length(pred, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def _squash(text: str) -> str:
    return " ".join(text.lower().split())


def contains_fact(text: str, fact: str) -> bool:
    """The key fact appears in the text, ignoring case and spacing."""
    return _squash(fact) in _squash(text)


def _split_source(source: str) -> tuple[str, str]:
    path, _, anchor = source.partition("#")
    return path.strip("/"), anchor


def source_matches(cited: str, expected: str) -> bool:
    """Same source, or the same anchor on paths that agree on their trailing components.

    Lets ``kb/billing/refunds.md#x`` match ``billing/refunds.md#x``; an expected
    source without an anchor matches any anchor on that page.
    """
    if cited == expected:
        return True
    cited_path, cited_anchor = _split_source(cited)
    expected_path, expected_anchor = _split_source(expected)
    if expected_anchor and cited_anchor != expected_anchor:
        return False
    a, b = cited_path.split("/"), expected_path.split("/")
    shorter = min(len(a), len(b))
    return shorter > 0 and a[-shorter:] == b[-shorter:]


def hit_at_k(cited_sources: list[str], expected: str, k: int) -> bool:
    return any(source_matches(source, expected) for source in cited_sources[:k])


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile, q in [0, 100]."""
    if not values:
        return 0.0
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)
