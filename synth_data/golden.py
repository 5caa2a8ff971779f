"""The workspace's own golden set, for a regression gate that measures the operator's domain, not the demo's.

When the operator supplies no golden set (``golden_set``), the bundled one is the demo product's and says nothing
about their knowledge base. So at synth time the cycle builds ``<home>/golden/workspace.jsonl`` from two sources:
questions a customer rated thumbs-up (the answer they liked is the reference, PII scrubbed) and questions the
teacher writes from sampled knowledge-base sentences (the sentence is the reference). Rows are checked against
every dataset's trained questions, and synth protects them from training (``builder.protected_paths``), so the set
stays held out. A rebuild keeps what is there and only adds: resumed jobs and later cycles see the same questions.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from itertools import zip_longest
from pathlib import Path

from langchain_core.documents import Document
from langchain_core.language_models import BaseChatModel
from sqlalchemy import select

from affinage.core.atomic import atomic_write_text
from affinage.core.datasets import list_datasets
from affinage.core.decontamination import decontaminate, dedupe
from affinage.core.extraction import Embed, candidates, quotable
from affinage.core.jsonl import numbered_lines
from affinage.core.pii import redact_pii
from affinage.core.prompts import generated_part
from affinage.core.settings import Settings
from affinage.core.store import Store
from affinage.core.tables import Feedback, Interaction
from synth_data.teacher import TeacherError, question_for

log = logging.getLogger("affinage.synth")
THUMBS_UP, KNOWLEDGE_BASE = "thumbs-up", "knowledge-base"  # a row's ``origin``


@dataclass(frozen=True)
class Passage:
    """A knowledge-base chunk the teacher may write a question from."""

    source: str  # path#anchor, the citation a right answer gives
    text: str


def read_rows(path: Path) -> list[dict]:
    return [row for _, row in numbered_lines(path)] if path.is_file() else []


def trained_questions(datasets_dir: Path) -> list[str]:
    """Every question any dataset trains on (SFT, preference and KTO prompts end with the serving template's
    question); held-out rows are never trained on and are left out."""
    questions = []
    for manifest in list_datasets(datasets_dir):
        folder = datasets_dir / manifest["id"]
        for kind, turns in (("sft", lambda r: r["messages"][:-1]), ("preference", lambda r: r["prompt"]),
                            ("kto", lambda r: r["prompt"])):
            for _, row in numbered_lines(folder / f"{kind}.jsonl") if (folder / f"{kind}.jsonl").is_file() else ():
                questions.append(turns(row)[-1]["content"].rsplit("Question: ", 1)[-1])
    return questions


def thumbs_up_rows(store: Store, taken: set[str], limit: int) -> list[dict]:
    """Up to ``limit`` questions a customer rated thumbs-up (oldest first, none in ``taken``), the liked answer as
    reference; never one that was also rated down or corrected, nor eval traffic."""
    rated_up = select(Feedback.interaction_id).where(Feedback.rating == "up")
    doubted = select(Feedback.interaction_id).where((Feedback.rating == "down") | Feedback.correction.is_not(None))
    with store.session() as session:
        liked = [i for i in session.scalars(select(Interaction).where(
            Interaction.id.in_(rated_up), Interaction.id.not_in(doubted), Interaction.channel != "eval")
            .order_by(Interaction.created_at)) if i.id not in taken]
        rows = []
        for interaction in liked[:max(limit, 0)]:
            answer = generated_part(redact_pii(interaction.answer)[0]).strip()
            if answer:
                rows.append({"question": redact_pii(interaction.question)[0], "answer": answer,
                             "source": interaction.retrieved[0]["source"] if interaction.retrieved else None,
                             "origin": THUMBS_UP, "interaction_id": interaction.id})
        return rows


def knowledge_base_rows(passages: list[Passage], teacher: BaseChatModel, taken: set[str], n: int,
                        seed: int) -> list[dict]:
    """Up to ``n`` questions the teacher writes, each from one quotable sentence of a sampled passage (the
    reference); sentences in ``taken`` are skipped, and a passage the teacher fails on is passed over. At most
    ``2n`` passages are tried: a teacher that cannot write questions must not walk a large knowledge base."""
    rng = random.Random(seed)
    rows, tried = [], 0
    for passage in rng.sample(passages, len(passages)):
        if len(rows) >= n or tried >= 2 * n:
            break
        sentences = [s for s, _ in candidates([Document(passage.text)]) if quotable(s) and s not in taken]
        if not sentences:
            continue
        sentence, tried = rng.choice(sentences), tried + 1
        try:
            question = question_for(teacher, sentence)
        except TeacherError as error:
            log.warning("teacher wrote no golden question", extra={"source": passage.source, "error": str(error)})
            continue
        rows.append({"question": redact_pii(question)[0], "answer": sentence, "source": passage.source,
                     "origin": KNOWLEDGE_BASE})
    return rows


def interleaved(rows: list[dict]) -> list[dict]:
    """Thumbs-up and knowledge-base rows taking turns, each in its own order: the gates ask the first
    ``gate_golden_limit``, and those should draw on both."""
    groups = [[r for r in rows if r.get("origin") == origin] for origin in (THUMBS_UP, KNOWLEDGE_BASE)]
    return [r for pair in zip_longest(*groups) for r in pair if r is not None]


def build_workspace_golden(settings: Settings, store: Store, passages: list[Passage], teacher: BaseChatModel,
                           embed: Embed | None = None) -> dict:
    """Extend ``settings.workspace_golden_path`` up to ``golden_thumbs_up`` thumbs-up rows and
    ``golden_kb_questions`` teacher rows, drop every row near a question any dataset trains on, and write it
    atomically; returns what it holds. Idempotent: the same log, knowledge base and datasets give the same file;
    a thumbs-up row whose interaction was erased since is dropped."""
    path = settings.workspace_golden_path
    kept = read_rows(path)
    ids = [r["interaction_id"] for r in kept if r.get("origin") == THUMBS_UP]
    with store.session() as session:  # an erasure deleted the interaction: its question and answer go too
        logged = set(session.scalars(select(Interaction.id).where(Interaction.id.in_(ids)))) if ids else set()
    kept = [r for r in kept if r.get("origin") != THUMBS_UP or r["interaction_id"] in logged]
    up = [r for r in kept if r.get("origin") == THUMBS_UP]
    kb = [r for r in kept if r.get("origin") == KNOWLEDGE_BASE]
    new = thumbs_up_rows(store, {r["interaction_id"] for r in up}, settings.golden_thumbs_up - len(up))
    new += knowledge_base_rows(passages, teacher, {r["answer"] for r in kb}, settings.golden_kb_questions - len(kb),
                               seed=len(kb))
    rows, _ = dedupe(interleaved([*kept, *new]), lambda r: r["question"], threshold=0.8)
    rows, dropped, _ = decontaminate(rows, lambda r: r["question"], trained_questions(settings.datasets_dir),
                                     embed=embed)
    if rows != kept or not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return {"path": str(path), "rows": len(rows), "added": len([r for r in rows if r in new]),
            "thumbs_up": sum(r["origin"] == THUMBS_UP for r in rows),
            "knowledge_base": sum(r["origin"] == KNOWLEDGE_BASE for r in rows), "dropped_as_near_training": dropped}
