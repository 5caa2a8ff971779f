"""From failures and their question vectors to ``Topic``s: cluster, place the fixes, count, label, pick a remedy.

Pure: the vectors are passed in, so topics are tested on hand-made vectors without an embedder or a database.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from affinage.core.text import content_tokens
from affinage.core.timeutil import as_utc
from agent.detectors import KINDS
from agent.triage.clustering import cluster, normalise
from agent.triage.failures import Failure, Fix
from agent.triage.remedies import RemedyRules, TopicStats, suggest_remedy, topic_stats

MAX_EXAMPLES = 3
MAX_SOURCES = 3
LABEL_WORDS = 3

# Words that carry no topic in a support question, beyond the detectors' stopwords.
LABEL_STOPWORDS = frozenset(
    "get got use using make want need possible please help way work works still also one like know tell would could "
    "thing something anything able anyone cannot can't don't doesn't isn't won't".split())


@dataclass
class Topic:
    """One group of similar failures, with what to do about it."""

    id: int
    label: str  # the words its questions share most, else its most central question
    count: int
    users: int
    remedy: str  # one of REMEDIES
    why: str
    signal_counts: dict[str, int]  # kind -> failures with that signal, in KINDS order
    examples: list[str]  # up to MAX_EXAMPLES distinct questions, most central first
    interaction_ids: list[str]  # oldest first
    doc_questions: list[str]  # knowledge gaps only: distinct questions for the documentation team
    top_sources: list[tuple[str, int]]  # the sources retrieved most often for these failures, with counts
    stats: TopicStats

    def to_json(self) -> dict:
        data = asdict(self)
        data["top_sources"] = [{"source": s, "count": n} for s, n in self.top_sources]
        if self.stats.mean_top_score is not None:
            data["stats"]["mean_top_score"] = round(self.stats.mean_top_score, 4)
        return data


def build_topics(failures: Sequence[Failure], vectors: np.ndarray, threshold: float = 0.6,
                 fixes: Sequence[Fix] = (), fix_vectors: np.ndarray | None = None,
                 rules: RemedyRules = RemedyRules(), linkage: str = "average") -> list[Topic]:
    """Cluster failures by their question vectors and describe each cluster as a ``Topic``, biggest first.

    A fix belongs to the topic holding the interaction it was corrected from; failing that, to the topic whose
    centroid its question vector (a row of ``fix_vectors``) is most similar to, if at least ``threshold``.
    """
    x = normalise(vectors) if len(failures) else np.zeros((0, 1))
    if x.shape[0] != len(failures):
        raise ValueError(f"got {x.shape[0]} vectors for {len(failures)} failures")
    if fix_vectors is not None and len(fix_vectors) != len(fixes):
        raise ValueError(f"got {len(fix_vectors)} fix vectors for {len(fixes)} fixes")
    labels = cluster(x, threshold, linkage)
    members: dict[int, list[int]] = {}
    for row, label in enumerate(labels):
        members.setdefault(label, []).append(row)
    centroids = {label: x[rows].mean(axis=0) for label, rows in members.items()}
    topic_fixes = _place_fixes(failures, labels, centroids, fixes, fix_vectors, threshold)
    return [_describe(label, members[label], failures, x, centroids[label], topic_fixes.get(label, ()), rules)
            for label in sorted(members)]


def _place_fixes(failures: Sequence[Failure], labels: Sequence[int], centroids: Mapping[int, np.ndarray],
                 fixes: Sequence[Fix], fix_vectors: np.ndarray | None, threshold: float) -> dict[int, list[Fix]]:
    """The fixes of each topic label: by the interaction they came from, else by the nearest centroid."""
    topic_of_interaction = {f.interaction_id: labels[row] for row, f in enumerate(failures)}
    fx = normalise(fix_vectors) if fix_vectors is not None and len(fixes) else None
    placed: dict[int, list[Fix]] = {}
    for n, fix in enumerate(fixes):
        label = topic_of_interaction.get(fix.interaction_id) if fix.interaction_id else None
        if label is None and fx is not None and centroids:
            scores = {lab: float(fx[n] @ c) / (float(np.linalg.norm(c)) or 1.0) for lab, c in centroids.items()}
            nearest = max(sorted(scores), key=lambda lab: scores[lab])  # ties: the lowest label, the bigger topic
            label = nearest if scores[nearest] >= threshold else None
        if label is not None:
            placed.setdefault(label, []).append(fix)
    return placed


def _describe(label: int, rows: Sequence[int], failures: Sequence[Failure], x: np.ndarray, centroid: np.ndarray,
              fixes: Sequence[Fix], rules: RemedyRules) -> Topic:
    """One cluster as a ``Topic``: its failures oldest first, its questions most central first."""
    rows = sorted(rows, key=lambda r: (as_utc(failures[r].created_at), r))
    group = [failures[r] for r in rows]
    centrality = {r: float(x[r] @ centroid) for r in rows}
    central = [failures[r].question for r in sorted(rows, key=lambda r: (-centrality[r], r))]
    stats = topic_stats(group, fixes)
    remedy, why = suggest_remedy(stats, rules)
    doc_questions: list[str] = []
    if remedy == "knowledge_gap":
        asked = Counter(_question_key(f.question) for f in group if f.weak)
        gap = [q for q in central if asked[_question_key(q)]]
        doc_questions = sorted(_distinct(gap), key=lambda q: -asked[_question_key(q)])  # stable: central first
    return Topic(
        id=label, label=topic_label(central), count=stats.count, users=stats.users, remedy=remedy, why=why,
        signal_counts=_signal_counts(group), examples=_distinct(central)[:MAX_EXAMPLES],
        interaction_ids=[f.interaction_id for f in group], doc_questions=doc_questions,
        top_sources=_top_sources(group), stats=stats,
    )


def topic_label(questions: Sequence[str], words: int = LABEL_WORDS) -> str:
    """The content words found in the most questions (ties: first seen), else the first question shortened."""
    counts: Counter[str] = Counter()
    first: dict[str, int] = {}
    for question in questions:
        for token in dict.fromkeys(t for t in content_tokens(question) if t not in LABEL_STOPWORDS):
            counts[token] += 1
            first.setdefault(token, len(first))
    if not counts:
        return questions[0][:60] if questions else ""
    ranked = sorted(counts, key=lambda t: (-counts[t], first[t]))
    return " ".join(ranked[:words])


def _question_key(question: str) -> str:
    """Questions that differ only in case, spacing or final punctuation are the same question."""
    return " ".join(question.casefold().split()).rstrip("?!. ")


def _distinct(questions: Iterable[str]) -> list[str]:
    seen: set[str] = set()
    out = []
    for question in questions:
        key = _question_key(question)
        if key not in seen:
            seen.add(key)
            out.append(question)
    return out


def _signal_counts(failures: Sequence[Failure]) -> dict[str, int]:
    counts = Counter(kind for f in failures for kind in f.kinds)
    order = list(KINDS) + sorted(set(counts) - set(KINDS))
    return {kind: counts[kind] for kind in order if counts[kind]}


def _top_sources(failures: Sequence[Failure]) -> list[tuple[str, int]]:
    """Sources by how many failures retrieved them; ties go to the one ranked first more often, then by name."""
    counts: Counter[str] = Counter()
    firsts: Counter[str] = Counter()
    for failure in failures:
        sources = [r["source"] for r in failure.retrieved if r.get("source")]
        counts.update(set(sources))
        if sources:
            firsts[sources[0]] += 1
    return sorted(counts.items(), key=lambda item: (-item[1], -firsts[item[0]], item[0]))[:MAX_SOURCES]
