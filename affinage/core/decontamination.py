"""Near-duplicates and decontamination: keep training rows apart from each other and from every evaluation question."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from affinage.core.text import jaccard, normalise, shingles
from affinage.core.validate import open_unit

T = TypeVar("T")


class _ShingleIndex:
    """Finds indexed texts whose shingle Jaccard with a query reaches ``threshold`` without comparing every pair.

    Prefix filtering: with each set's shingles in one global order (rarest first, so prefixes are selective),
    two sets with Jaccard >= t share a shingle among each one's first ``|x| - ceil(t|x|) + 1``. Only those
    prefixes are indexed and looked up; the few candidates are then scored exactly.
    """

    def __init__(self, threshold: float, frequency: Counter[str]) -> None:
        self.threshold = threshold
        self.frequency = frequency
        self.sets: list[set[str]] = []
        self.postings: dict[str, list[int]] = defaultdict(list)

    def _prefix(self, grams: set[str]) -> list[str]:
        ordered = sorted(grams, key=lambda gram: (self.frequency[gram], gram))
        return ordered[: len(grams) - math.ceil(self.threshold * len(grams) - 1e-9) + 1]

    def add(self, grams: set[str]) -> None:
        for gram in self._prefix(grams):
            self.postings[gram].append(len(self.sets))
        self.sets.append(grams)

    def best(self, grams: set[str]) -> tuple[int, float] | None:
        """The most similar indexed text at or above the threshold (the earliest on a tie) and its Jaccard."""
        candidates = {i for gram in self._prefix(grams) for i in self.postings.get(gram, ())}
        scored = [(jaccard(grams, self.sets[i]), -i) for i in candidates]
        score, negative_index = max(scored, default=(0.0, 0))
        return (-negative_index, score) if score >= self.threshold else None


def dedupe(items: Sequence[T], key: Callable[[T], str], threshold: float = 0.8) -> tuple[list[T], int]:
    """Keep the first item of each group whose texts' character 5-gram Jaccard reaches ``threshold``.

    Near-copies would weigh one failure many times in training; keeping the first makes the choice stable.
    """
    threshold = open_unit("dedupe threshold", threshold)
    grams = [shingles(key(item)) for item in items]
    index = _ShingleIndex(threshold, Counter(gram for item_grams in grams for gram in item_grams))
    kept: list[T] = []
    for item, item_grams in zip(items, grams, strict=True):
        if index.best(item_grams) is None:
            index.add(item_grams)
            kept.append(item)
    return kept, len(items) - len(kept)


@dataclass(frozen=True)
class Contamination:
    """Why an item was dropped by ``decontaminate``: the protected question it is near, how, and how near."""

    index: int  # position of the dropped item in the input
    question: str
    protected_index: int
    protected_question: str
    method: str  # "ngram" | "jaccard" | "embedding"
    score: float  # share of the item's n-grams found, the Jaccard, or the cosine similarity


def _ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    words = normalise(text).split()
    if len(words) < n:
        return {tuple(words)} if words else set()
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def decontaminate(
    items: Sequence[T],
    key: Callable[[T], str],
    protected_questions: Sequence[str],
    ngram: int = 8,
    jaccard_threshold: float = 0.5,
    embed: Callable[[list[str]], Sequence[Sequence[float]]] | None = None,
    embedding_threshold: float = 0.9,
) -> tuple[list[T], int, list[Contamination]]:
    """Drop every item whose question is near any protected (evaluation, golden, held-out) question.

    Near means any of: a shared run of ``ngram`` normalised words (a question shorter than that must match
    one whole); character 5-gram Jaccard at least ``jaccard_threshold``; or, when ``embed`` (texts → vectors,
    e.g. ``Embeddings.embed_documents``) is given, cosine similarity at least ``embedding_threshold``.
    Thresholds lean low on purpose: a lost training example is cheap, a contaminated gate is not.
    """
    if ngram < 1:
        raise ValueError(f"ngram must be at least 1, got {ngram!r}")
    jaccard_threshold = open_unit("jaccard_threshold", jaccard_threshold)
    embedding_threshold = open_unit("embedding_threshold", embedding_threshold)
    questions = [key(item) for item in items]
    question_grams = [shingles(q) for q in questions]
    protected_grams = [shingles(q) for q in protected_questions]
    index = _ShingleIndex(jaccard_threshold, Counter(g for grams in question_grams + protected_grams for g in grams))
    by_ngram: dict[tuple[str, ...], int] = {}
    for i, protected in enumerate(protected_questions):
        for gram in _ngrams(protected, ngram):
            by_ngram.setdefault(gram, i)
        index.add(protected_grams[i])
    cosine = None
    if embed is not None and questions and protected_questions:
        cosine = _cosine_matrix(embed, questions, list(protected_questions))

    kept: list[T] = []
    matches: list[Contamination] = []
    for i, (item, question) in enumerate(zip(items, questions, strict=True)):
        grams = _ngrams(question, ngram)
        hits = [by_ngram[g] for g in grams if g in by_ngram]
        if hits:
            match = (min(hits), "ngram", len(hits) / len(grams))
        elif (best := index.best(question_grams[i])) is not None:
            match = (best[0], "jaccard", best[1])
        elif cosine is not None and max(cosine[i]) >= embedding_threshold:
            row = cosine[i]
            j = row.index(max(row))
            match = (j, "embedding", row[j])
        else:
            kept.append(item)
            continue
        j, method, score = match
        matches.append(Contamination(i, question, j, protected_questions[j], method, float(score)))
    return kept, len(items) - len(kept), matches


def _cosine_matrix(embed: Callable[[list[str]], Sequence[Sequence[float]]], rows: list[str],
                   columns: list[str]) -> list[list[float]]:
    a = np.asarray(embed(rows), dtype=float)
    b = np.asarray(embed(columns), dtype=float)
    if a.ndim != 2 or b.ndim != 2 or a.shape[0] != len(rows) or b.shape[0] != len(columns) or a.shape[1] != b.shape[1]:
        raise ValueError(f"embed returned arrays of shapes {a.shape} and {b.shape} for {len(rows)} and "
                         f"{len(columns)} texts; expected one vector of the same width per text")
    a /= np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b /= np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return (a @ b.T).tolist()
