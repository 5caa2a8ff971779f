"""Triage: group recent failures into topics and suggest, for each, the cheapest remedy that can work.

A *failure* is a logged interaction with at least one failure signal (``agent.detectors``). Its question is embedded,
similar questions are clustered into *topics* (agglomerative clustering on cosine similarity), and each topic gets
counts, its most central questions, the sources retrieval kept returning, and one of three remedies:

* ``knowledge_gap``    — no good passage exists: the documentation team gets the list of questions to answer.
* ``prompt_retrieval`` — a good passage was retrieved but the answer was wrong: put the corrected answer in the
  example bank or tweak the prompt (instant, no training).
* ``behaviour``        — retrieval was confident, yet the failures persist (tone, format, refusals, invented facts,
  or failures that go on after a correction was added to the example bank): candidates for fine-tuning.

Only ``triage`` touches the database; clustering, statistics, remedy rules and rendering are pure functions over
plain values, tested against hand-made numbers. The embedder is passed in as a callable.

Limits: ``cluster`` keeps an n×n similarity matrix (float64: 72 MB at n = 3000) and refuses more than
``MAX_CLUSTER_INPUT`` rows; ``triage`` reads only the ``limit`` most recent failures (2000 by default).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

import numpy as np
from sqlalchemy import select

from agent.detectors import KINDS
from affinage.core.text import content_tokens
from affinage.core.tables import Example, Feedback, Interaction
from affinage.core.store import Store

Embed = Callable[[list[str]], np.ndarray]

REMEDIES = ("knowledge_gap", "prompt_retrieval", "behaviour")
REMEDY_TITLES = {"knowledge_gap": "knowledge gap", "prompt_retrieval": "prompt/retrieval", "behaviour": "behaviour"}
LINKAGES = ("average", "complete")
MAX_CLUSTER_INPUT = 3000  # an n×n float64 similarity matrix: 72 MB at 3000 rows
EXCLUDED_CHANNELS = ("eval",)  # evaluation runs are not users' failures
MAX_EXAMPLES = 3
MAX_SOURCES = 3
LABEL_WORDS = 3

# Feedback comments that complain about how something was said rather than what: a behaviour, not a fact.
STYLE_COMPLAINT = re.compile(
    r"\b(?:tone|rude|impolite|condescending|unfriendly|robotic|formal|informal|format(?:ting|ted)?|markdown|bullet"
    r"(?:s| points?)?|too (?:long|short|verbose|wordy|terse|brief)|verbose|wordy|rambl\w*|repetitive|repeats? "
    r"itself|grammar|spelling|wrong language)\b",
    re.IGNORECASE,
)


# --- clustering -------------------------------------------------------------------------------------------------

def _threshold(value: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"threshold must be a number in [-1, 1], got {value!r}") from None
    if not -1.0 <= number <= 1.0:  # also rejects NaN
        raise ValueError(f"threshold must be a number in [-1, 1], got {value!r}")
    return number


def cluster(vectors: np.ndarray, threshold: float, linkage: str = "average") -> list[int]:
    """Cluster labels for the rows of ``vectors`` (n, d) by agglomerative clustering on cosine similarity.

    Starting from singletons, the two most similar clusters are merged while their similarity is at least
    ``threshold``. ``average`` linkage scores two clusters by the mean similarity of their cross pairs,
    ``complete`` by the least similar pair (tighter topics). Rows are L2-normalised here (a zero row is similar to
    nothing), so any embedding works. Ties go to the lowest index, so the result is deterministic. Labels are
    renumbered by cluster size, largest first, then by the cluster's first row: label 0 is the biggest topic.

    Memory is O(n²) and time about O(n²) (each row's best partner is cached and recomputed only when it merges):
    at most ``MAX_CLUSTER_INPUT`` rows, else a ValueError — cap the input to the most recent rows first.
    """
    if linkage not in LINKAGES:
        raise ValueError(f"linkage must be one of {', '.join(LINKAGES)}, got {linkage!r}")
    threshold = _threshold(threshold)
    x = np.asarray(vectors, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"vectors must be a 2-D array (n, d), got shape {x.shape}")
    n = x.shape[0]
    if n > MAX_CLUSTER_INPUT:
        raise ValueError(f"cannot cluster {n} vectors: at most {MAX_CLUSTER_INPUT} (keep the most recent ones)")
    if not np.isfinite(x).all():
        raise ValueError("vectors contain NaN or infinite values")
    if n == 0:
        return []
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x = np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)

    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    size = np.ones(n)
    active = np.ones(n, dtype=bool)
    owner = np.arange(n)  # the cluster (by its lowest row) each row belongs to
    best = sim.max(axis=1)
    partner = sim.argmax(axis=1)
    while True:
        i = int(np.argmax(best))
        if not best[i] >= threshold:  # also stops when every cluster is merged (best = -inf)
            break
        a, b = sorted((i, int(partner[i])))
        if linkage == "average":
            merged = (size[a] * sim[a] + size[b] * sim[b]) / (size[a] + size[b])
        else:
            merged = np.minimum(sim[a], sim[b])
        merged[~active] = -np.inf
        merged[[a, b]] = -np.inf
        sim[a, :] = merged
        sim[:, a] = merged
        sim[b, :] = -np.inf
        sim[:, b] = -np.inf
        active[b] = False
        size[a] += size[b]
        owner[owner == b] = a
        best[b] = -np.inf
        best[a], partner[a] = sim[a].max(), sim[a].argmax()
        # Rows whose best partner was a or b must look again; the others only check whether the merge beats it.
        stale = active & ((partner == a) | (partner == b))
        stale[a] = False
        for k in np.flatnonzero(stale):
            best[k], partner[k] = sim[k].max(), sim[k].argmax()
        better = active & (merged > best)
        better[a] = False
        best[better] = merged[better]
        partner[better] = a

    groups: dict[int, list[int]] = {}
    for row, root in enumerate(owner.tolist()):
        groups.setdefault(root, []).append(row)
    ordered = sorted(groups.values(), key=lambda rows: (-len(rows), rows[0]))
    labels = [0] * n
    for label, rows in enumerate(ordered):
        for row in rows:
            labels[row] = label
    return labels


# --- the failures, as plain values ------------------------------------------------------------------------------

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


def _utc(moment: datetime) -> datetime:
    """Aware UTC; naive datetimes (SQLite returns them) are taken to be UTC already."""
    return moment.astimezone(timezone.utc) if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


# --- statistics and remedies ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TopicStats:
    """Counts over one topic's failures; each count is of failures (interactions), so at most ``count``."""

    count: int = field(metadata={"help": "failures in the topic"})
    users: int = field(default=1, metadata={"help": "distinct users who hit them (no user counts as one)"})
    weak: int = field(default=0, metadata={"help": "failures with weak or no retrieval, or an abstention"})
    negative: int = field(default=0, metadata={"help": "failures rated down or corrected"})
    corrected: int = field(default=0, metadata={"help": "failures with a written correction"})
    ungrounded: int = field(default=0, metadata={"help": "failures whose answer the passages did not support"})
    refusals: int = field(default=0, metadata={"help": "failures whose answer refused"})
    style: int = field(default=0, metadata={"help": "failures with feedback about tone or format"})
    behaviour: int = field(default=0, metadata={"help": "failures that are ungrounded, refusals or style complaints"})
    after_fix: int = field(default=0, metadata={
        "help": "failures that happened after a correction-derived example for the topic was in the example bank"})
    mean_top_score: float | None = field(default=None, metadata={
        "help": "mean best-passage score over failures that retrieved anything"})

    def __post_init__(self) -> None:
        if not isinstance(self.count, int) or self.count < 1:
            raise ValueError(f"count must be a positive integer, got {self.count!r}")
        for name in ("users", "weak", "negative", "corrected", "ungrounded", "refusals", "style", "behaviour",
                     "after_fix"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 0 <= value <= self.count:
                raise ValueError(f"{name} must be an integer in [0, count={self.count}], got {value!r}")

    def share(self, name: str) -> float:
        """``name``'s count as a share of the topic's failures."""
        return getattr(self, name) / self.count


def topic_stats(failures: Sequence[Failure], fixes: Sequence[Fix] = ()) -> TopicStats:
    """The statistics ``suggest_remedy`` reads, for one topic's failures and the fixes that belong to it."""
    if not failures:
        raise ValueError("a topic needs at least one failure")
    first_fix = min((_utc(f.created_at) for f in fixes), default=None)
    scores = [s for s in (f.top_score for f in failures) if s is not None]
    return TopicStats(
        count=len(failures),
        users=len({f.user for f in failures}),
        weak=sum(f.weak for f in failures),
        negative=sum(f.negative for f in failures),
        corrected=sum(f.corrected for f in failures),
        ungrounded=sum("ungrounded" in f.kinds for f in failures),
        refusals=sum("refusal" in f.kinds for f in failures),
        style=sum(f.style_complaint for f in failures),
        behaviour=sum(f.behaviour for f in failures),
        after_fix=0 if first_fix is None else sum(_utc(f.created_at) > first_fix for f in failures),
        mean_top_score=sum(scores) / len(scores) if scores else None,
    )


@dataclass(frozen=True)
class RemedyRules:
    """Thresholds for ``suggest_remedy``."""

    gap_share: float = field(default=0.5, metadata={
        "help": "share of failures with weak/no retrieval or an abstention from which a topic is a knowledge gap"})
    after_fix_min: int = field(default=2, metadata={
        "help": "failures after a correction-derived example existed from which the instant fix has not held"})
    persist_min_failures: int = field(default=3, metadata={"help": "failures that make a behaviour persistent"})
    persist_min_users: int = field(default=2, metadata={"help": "distinct users that make a behaviour persistent"})
    behaviour_share: float = field(default=0.5, metadata={
        "help": "share of ungrounded answers, refusals and tone/format complaints from which they dominate"})

    def __post_init__(self) -> None:
        for name in ("gap_share", "behaviour_share"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 < value <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {value!r}")
        for name in ("after_fix_min", "persist_min_failures", "persist_min_users"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")


def suggest_remedy(stats: TopicStats, rules: RemedyRules = RemedyRules()) -> tuple[str, str]:
    """The remedy key (one of ``REMEDIES``) for a topic and a one-line reason, by these rules, first match wins:

    1. ``knowledge_gap`` when at least ``gap_share`` of the failures had weak or no retrieval or abstained: no
       good passage exists, and neither a prompt nor training can invent one.
    2. ``behaviour`` when ``after_fix_min`` or more failures came after a correction-derived example for the topic
       was already in the example bank: the instant fix was tried and did not hold.
    3. ``behaviour`` when the failures persist — ``persist_min_failures`` or more from ``persist_min_users`` or
       more users — and ungrounded answers, refusals and tone/format complaints make up at least
       ``behaviour_share`` of them, although retrieval was confident (rule 1 did not fire).
    4. ``prompt_retrieval`` otherwise: a passage was there but the answer went wrong, and nothing cheap has been
       tried yet — add the corrected answer to the example bank or tweak the prompt. (Thumbs-down and corrections
       alone land here however many there are: the correction *is* the cheap fix, until rule 2 says it failed.)
    """
    count = stats.count
    if stats.share("weak") >= rules.gap_share:
        return "knowledge_gap", (f"{stats.weak} of {count} failures had weak or no retrieval or abstained"
                                 f"{_score_note(stats)}: no good passage exists — document the answers")
    if stats.after_fix >= rules.after_fix_min:
        return "behaviour", (f"{stats.after_fix} of {count} failures came after a correction was added to the "
                             f"example bank: the instant fix did not hold — a fine-tuning candidate")
    if (count >= rules.persist_min_failures and stats.users >= rules.persist_min_users
            and stats.share("behaviour") >= rules.behaviour_share):
        return "behaviour", (f"retrieval was confident{_score_note(stats)}, yet {stats.behaviour} of {count} "
                             f"failures from {stats.users} users are {_behaviour_kinds(stats)} — a fine-tuning "
                             f"candidate")
    confident = count - stats.weak
    fix = "add the corrected answer to the example bank" if stats.corrected else "add a curated example"
    return "prompt_retrieval", (f"retrieval was confident in {confident} of {count} failures{_score_note(stats)} "
                                f"but the answer went wrong: {fix} or tweak the prompt")


def _score_note(stats: TopicStats) -> str:
    return "" if stats.mean_top_score is None else f" (mean best passage {stats.mean_top_score:.2f})"


def _behaviour_kinds(stats: TopicStats) -> str:
    parts = [(stats.ungrounded, "ungrounded"), (stats.refusals, "refusals"), (stats.style, "tone/format complaints")]
    named = [f"{name} ({n})" for n, name in sorted(parts, key=lambda p: -p[0]) if n]
    return ", ".join(named) or "behaviour failures"


# --- topics -----------------------------------------------------------------------------------------------------

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


def _normalise(vectors: np.ndarray) -> np.ndarray:
    x = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def _question_key(question: str) -> str:
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


# Words that carry no topic in a support question, beyond the detectors' stopwords.
LABEL_STOPWORDS = frozenset(
    "get got use using make want need possible please help way work works still also one like know tell would could "
    "thing something anything able anyone cannot can't don't doesn't isn't won't".split())


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


def build_topics(failures: Sequence[Failure], vectors: np.ndarray, threshold: float = 0.6,
                 fixes: Sequence[Fix] = (), fix_vectors: np.ndarray | None = None,
                 rules: RemedyRules = RemedyRules(), linkage: str = "average") -> list[Topic]:
    """Cluster failures by their question vectors and describe each cluster as a ``Topic``, biggest first.

    A fix belongs to the topic holding the interaction it was corrected from; failing that, to the topic whose
    centroid its question vector (a row of ``fix_vectors``) is most similar to, if at least ``threshold``.
    """
    x = _normalise(vectors) if len(failures) else np.zeros((0, 1))
    if x.shape[0] != len(failures):
        raise ValueError(f"got {x.shape[0]} vectors for {len(failures)} failures")
    if fix_vectors is not None and len(fix_vectors) != len(fixes):
        raise ValueError(f"got {len(fix_vectors)} fix vectors for {len(fixes)} fixes")
    labels = cluster(x, threshold, linkage)
    members: dict[int, list[int]] = {}
    for row, label in enumerate(labels):
        members.setdefault(label, []).append(row)
    centroids = {label: x[rows].mean(axis=0) for label, rows in members.items()}

    topic_of_interaction = {f.interaction_id: labels[row] for row, f in enumerate(failures)}
    topic_fixes: dict[int, list[Fix]] = {}
    fx = _normalise(fix_vectors) if fix_vectors is not None and len(fixes) else None
    for n, fix in enumerate(fixes):
        label = topic_of_interaction.get(fix.interaction_id) if fix.interaction_id else None
        if label is None and fx is not None and members:
            scores = {label: float(fx[n] @ c) / (float(np.linalg.norm(c)) or 1.0) for label, c in centroids.items()}
            nearest = max(sorted(scores), key=lambda lab: scores[lab])
            label = nearest if scores[nearest] >= threshold else None
        if label is not None:
            topic_fixes.setdefault(label, []).append(fix)

    topics = []
    for label in sorted(members):
        rows = sorted(members[label], key=lambda r: (_utc(failures[r].created_at), r))
        group = [failures[r] for r in rows]
        centrality = {r: float(x[r] @ centroids[label]) for r in rows}
        central = [failures[r].question for r in sorted(rows, key=lambda r: (-centrality[r], r))]
        stats = topic_stats(group, topic_fixes.get(label, ()))
        remedy, why = suggest_remedy(stats, rules)
        doc_questions: list[str] = []
        if remedy == "knowledge_gap":
            asked = Counter(_question_key(f.question) for f in group if f.weak)
            gap = [q for q in central if asked[_question_key(q)]]
            doc_questions = sorted(_distinct(gap), key=lambda q: -asked[_question_key(q)])  # stable: central first
        topics.append(Topic(
            id=label, label=topic_label(central), count=stats.count, users=stats.users, remedy=remedy, why=why,
            signal_counts=_signal_counts(group), examples=_distinct(central)[:MAX_EXAMPLES],
            interaction_ids=[f.interaction_id for f in group], doc_questions=doc_questions,
            top_sources=_top_sources(group), stats=stats,
        ))
    return topics


# --- reading the log --------------------------------------------------------------------------------------------

def triage(store: Store, embed: Embed, since: datetime | None = None, threshold: float = 0.6,
           limit: int = 2000) -> list[Topic]:
    """Topics of the ``limit`` most recent failures since ``since`` (all time if None), biggest first.

    A failure is an interaction with at least one signal, outside the ``eval`` channel. ``embed`` maps a list of
    questions to an (n, d) array (the retrieval embedder's ``encode``); it is called once for the failures and, if
    the example bank holds correction-derived examples that cannot be placed by their interaction, once for them.
    ``limit`` may not exceed ``MAX_CLUSTER_INPUT``.
    """
    _threshold(threshold)
    if not isinstance(limit, int) or not 1 <= limit <= MAX_CLUSTER_INPUT:
        raise ValueError(f"limit must be an integer in [1, {MAX_CLUSTER_INPUT}], got {limit!r}")
    query = (select(Interaction.id, Interaction.question, Interaction.created_at, Interaction.user,
                    Interaction.abstained, Interaction.signals, Interaction.retrieved)
             .where(Interaction.signals.is_not(None), Interaction.channel.not_in(EXCLUDED_CHANNELS))
             .order_by(Interaction.created_at.desc(), Interaction.id.desc()))
    if since is not None:
        query = query.where(Interaction.created_at >= _utc(since))
    rows = []
    with store.session() as session:
        # Signals are a JSON list, so "non-empty" is checked here rather than in dialect-specific SQL.
        result = session.execute(query.execution_options(yield_per=500))
        for row in result:
            if row.signals:
                rows.append(row)
                if len(rows) == limit:
                    break
        result.close()
        feedback: dict[str, list] = {}
        ids = [row.id for row in rows]
        for start in range(0, len(ids), 500):
            for fb in session.execute(select(Feedback.interaction_id, Feedback.rating, Feedback.correction,
                                             Feedback.comment)
                                      .where(Feedback.interaction_id.in_(ids[start:start + 500]))
                                      .order_by(Feedback.created_at)):
                feedback.setdefault(fb.interaction_id, []).append(fb)
        fixes = [Fix(created_at=e.created_at, question=e.question, interaction_id=e.interaction_id)
                 for e in session.execute(select(Example.created_at, Example.question, Example.interaction_id)
                                          .where(Example.origin == "correction").order_by(Example.created_at))]
    rows.reverse()  # oldest first: ties in clustering and ordering go to the earlier failure
    failures = [Failure(
        interaction_id=row.id, question=row.question, created_at=_utc(row.created_at), user=row.user,
        abstained=bool(row.abstained), signals=tuple(row.signals), retrieved=tuple(row.retrieved or ()),
        ratings=tuple(fb.rating for fb in feedback.get(row.id, ())),
        corrections=tuple(fb.correction for fb in feedback.get(row.id, ()) if fb.correction and fb.correction.strip()),
        comments=tuple(fb.comment for fb in feedback.get(row.id, ()) if fb.comment and fb.comment.strip()),
    ) for row in rows]
    if not failures:
        return []
    vectors = _embedded(embed, [f.question for f in failures])
    # A fix from one of these failures is placed by its interaction; only the others need their question embedded.
    known = {f.interaction_id for f in failures}
    unplaced = [n for n, fix in enumerate(fixes) if fix.interaction_id not in known]
    fix_vectors = None
    if unplaced:
        fix_vectors = np.zeros((len(fixes), vectors.shape[1]))  # zero rows are similar to nothing
        fix_vectors[unplaced] = _embedded(embed, [fixes[n].question for n in unplaced])
    return build_topics(failures, vectors, threshold, fixes, fix_vectors)


def _embedded(embed: Embed, texts: list[str]) -> np.ndarray:
    vectors = np.asarray(embed(texts), dtype=np.float64)
    if vectors.ndim != 2 or vectors.shape[0] != len(texts):
        raise ValueError(f"embed returned shape {vectors.shape} for {len(texts)} texts; expected ({len(texts)}, d)")
    return vectors


# --- the report -------------------------------------------------------------------------------------------------

def render_text(topics: Sequence[Topic], max_doc_questions: int = 20) -> str:
    """A plain-text report: one block per topic with its remedy, reason, examples and, for gaps, the questions."""
    if not topics:
        return "No failures to triage.\n"
    total = sum(t.count for t in topics)
    remedies = Counter(t.remedy for t in topics)
    summary = ", ".join(f"{remedies[r]} {REMEDY_TITLES[r]}" for r in REMEDIES if remedies[r])
    lines = [f"{len(topics)} topic(s) from {total} failure(s): {summary}", ""]
    for topic in topics:
        users = f"{topic.users} user{'s' if topic.users != 1 else ''}"
        lines.append(f"#{topic.id} {topic.label} — {topic.count} failure{'s' if topic.count != 1 else ''}, {users}")
        lines.append(f"  remedy: {REMEDY_TITLES.get(topic.remedy, topic.remedy)} — {topic.why}")
        if topic.signal_counts:
            lines.append("  signals: " + ", ".join(f"{k} {n}" for k, n in topic.signal_counts.items()))
        if topic.top_sources:
            lines.append("  sources: " + ", ".join(f"{s} ({n})" for s, n in topic.top_sources))
        lines.append("  examples:")
        lines.extend(f"    - {q}" for q in topic.examples)
        if topic.doc_questions:
            lines.append("  questions for the documentation team:")
            lines.extend(f"    - {q}" for q in topic.doc_questions[:max_doc_questions])
            if len(topic.doc_questions) > max_doc_questions:
                lines.append(f"    … and {len(topic.doc_questions) - max_doc_questions} more (see --json)")
        lines.append("")
    return "\n".join(lines)
