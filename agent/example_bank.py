"""Curated question/answer pairs, chosen by similarity as few-shot examples: the instant remedy, no training."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
from sqlalchemy import select

from affinage.core.database import lock_for_writing
from affinage.core.jsonl import numbered_lines
from affinage.core.store import Store
from affinage.core.tables import Example
from retrieval.embeddings import SentenceEmbeddings


class ExampleBank:
    def __init__(self, store: Store, embeddings: SentenceEmbeddings):
        self.store = store
        self.embeddings = embeddings
        self._cache: tuple[tuple[str, ...], list[Example], np.ndarray] | None = None
        self._lock = threading.Lock()

    def add(self, question: str, answer: str, source: str | None = None, origin: str = "curated",
            interaction_id: str | None = None, added_by: str | None = None) -> Example:
        if not question.strip() or not answer.strip():
            raise ValueError("an example needs a non-empty question and answer")
        return self.store.add(Example(question=question.strip(), answer=answer.strip(), source=source, origin=origin,
                                      interaction_id=interaction_id, added_by=added_by))

    def import_jsonl(self, path: Path, added_by: str | None = None) -> int:
        """Add every line of a JSONL file of {question, answer, source?}; all or nothing."""
        rows = []
        for number, item in numbered_lines(path):
            if not isinstance(item, dict) or not str(item.get("question", "")).strip() or not str(item.get("answer", "")).strip():
                raise ValueError(f"{path}:{number}: each line needs non-empty 'question' and 'answer'")
            rows.append(Example(question=item["question"].strip(), answer=item["answer"].strip(),
                                source=item.get("source"), origin="curated", added_by=added_by))
        with self.store.session() as session:
            lock_for_writing(session, Example.__tablename__)  # two imports of one file must not both add a pair
            known = {(q, a) for q, a in session.execute(select(Example.question, Example.answer))}
            fresh = [row for row in rows if (row.question, row.answer) not in known]
            session.add_all(fresh)
        return len(fresh)

    def all(self) -> list[Example]:
        with self.store.session() as session:
            return list(session.scalars(select(Example).order_by(Example.created_at)))

    def select(self, question: str, k: int, min_score: float) -> list[tuple[Example, float]]:
        """The k examples most similar to the question, with their cosine similarity, if similar enough to help."""
        if k <= 0:
            return []
        examples, vectors = self._vectors()
        if not examples:
            return []
        scores = vectors @ self.embeddings.encode([question])[0]
        best = np.argsort(-scores)[:k]
        return [(examples[i], float(scores[i])) for i in best if scores[i] >= min_score]

    def in_memory(self) -> list[Example]:
        """The examples this bank would choose from now (its cache, brought up to date): what an erasure checks."""
        return list(self._vectors()[0])

    def _vectors(self) -> tuple[list[Example], np.ndarray]:
        """The bank and its question vectors, cached under the set of example ids: any change (an example added,
        one erased, even both at once, in any replica) is seen at the next question, so an erased example is never
        shown again; only examples not seen before are embedded."""
        with self.store.session() as session:
            ids = tuple(sorted(session.scalars(select(Example.id))))  # sorted here: collations differ
        with self._lock:
            if self._cache is None or self._cache[0] != ids:
                examples = self.all()
                known = {} if self._cache is None else {e.id: v for e, v in zip(self._cache[1], self._cache[2])}
                fresh = [e for e in examples if e.id not in known]
                if fresh:
                    known.update(zip((e.id for e in fresh), self.embeddings.encode([e.question for e in fresh])))
                vectors = np.array([known[e.id] for e in examples]) if examples else np.zeros((0, 0), dtype=np.float32)
                self._cache = (tuple(sorted(e.id for e in examples)), examples, vectors)
            return self._cache[1], self._cache[2]
