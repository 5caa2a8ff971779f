"""The only part of triage that touches the database: read recent failures, their feedback and the fixes, embed the
questions, and hand plain values to ``build_topics``.

Limits: only the ``limit`` most recent failures are read (2000 by default, at most ``MAX_CLUSTER_INPUT``), so the
clustering's n×n matrix stays bounded however long the log grows.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from affinage.core.store import Store
from affinage.core.tables import Example, Feedback, Interaction
from agent.triage.clustering import MAX_CLUSTER_INPUT, check_threshold
from agent.triage.failures import Failure, Fix
from agent.triage.topics import Topic, build_topics

Embed = Callable[[list[str]], np.ndarray]

EXCLUDED_CHANNELS = ("eval",)  # evaluation runs are not users' failures
BATCH = 500  # rows per fetch, and interaction ids per IN (...) clause


def triage(store: Store, embed: Embed, since: datetime | None = None, threshold: float = 0.6,
           limit: int = 2000) -> list[Topic]:
    """Topics of the ``limit`` most recent failures since ``since`` (all time if None), biggest first.

    A failure is an interaction with at least one signal, outside the ``eval`` channel. ``embed`` maps a list of
    questions to an (n, d) array (the retrieval embedder's ``encode``); it is called once for the failures and, if
    the example bank holds correction-derived examples that cannot be placed by their interaction, once for them.
    """
    check_threshold(threshold)
    if not isinstance(limit, int) or not 1 <= limit <= MAX_CLUSTER_INPUT:
        raise ValueError(f"limit must be an integer in [1, {MAX_CLUSTER_INPUT}], got {limit!r}")
    with store.session() as session:
        failures = _read_failures(session, since, limit)
        fixes = [Fix(created_at=e.created_at, question=e.question, interaction_id=e.interaction_id)
                 for e in session.execute(select(Example.created_at, Example.question, Example.interaction_id)
                                          .where(Example.origin == "correction").order_by(Example.created_at))]
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


def _read_failures(session: Session, since: datetime | None, limit: int) -> list[Failure]:
    """The ``limit`` most recent failures since ``since``, oldest first: ties in clustering and ordering then go to
    the earlier failure."""
    query = (select(Interaction.id, Interaction.question, Interaction.created_at, Interaction.user,
                    Interaction.abstained, Interaction.signals, Interaction.retrieved)
             .where(Interaction.signals.is_not(None), Interaction.channel.not_in(EXCLUDED_CHANNELS))
             .order_by(Interaction.created_at.desc(), Interaction.id.desc()))
    if since is not None:
        query = query.where(Interaction.created_at >= since)  # the column takes a naive one as UTC
    rows = []
    # Signals are a JSON list, so "non-empty" is checked here rather than in dialect-specific SQL.
    result = session.execute(query.execution_options(yield_per=BATCH))
    for row in result:
        if row.signals:
            rows.append(row)
            if len(rows) == limit:
                break
    result.close()
    rows.reverse()
    feedback = _feedback(session, [row.id for row in rows])
    return [Failure(
        interaction_id=row.id, question=row.question, created_at=row.created_at, user=row.user,
        abstained=bool(row.abstained), signals=tuple(row.signals), retrieved=tuple(row.retrieved or ()),
        ratings=tuple(fb.rating for fb in feedback.get(row.id, ())),
        corrections=tuple(fb.correction for fb in feedback.get(row.id, ()) if fb.correction and fb.correction.strip()),
        comments=tuple(fb.comment for fb in feedback.get(row.id, ()) if fb.comment and fb.comment.strip()),
    ) for row in rows]


def _feedback(session: Session, ids: list[str]) -> dict[str, list]:
    """Feedback rows per interaction id, oldest first; ids go in batches to keep each IN (...) clause short."""
    feedback: dict[str, list] = {}
    for start in range(0, len(ids), BATCH):
        for fb in session.execute(select(Feedback.interaction_id, Feedback.rating, Feedback.correction,
                                         Feedback.comment)
                                  .where(Feedback.interaction_id.in_(ids[start:start + BATCH]))
                                  .order_by(Feedback.created_at)):
            feedback.setdefault(fb.interaction_id, []).append(fb)
    return feedback


def _embedded(embed: Embed, texts: list[str]) -> np.ndarray:
    vectors = np.asarray(embed(texts), dtype=np.float64)
    if vectors.ndim != 2 or vectors.shape[0] != len(texts):
        raise ValueError(f"embed returned shape {vectors.shape} for {len(texts)} texts; expected ({len(texts)}, d)")
    return vectors
