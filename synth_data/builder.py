"""Turn logged failures (and thumbs) into SFT examples, preference pairs and KTO labels, filtered, as one dataset.

For each interaction not used before: the target answer is a person's correction when there is one, else a
grounded answer written by the teacher from freshly retrieved passages; paraphrases of the question teach the
fact rather than the string. Every row uses the serving prompt (system prompt + the passage sentences picked for
that wording, as when serving), so the model is trained on exactly what it will see; answers are the model's own
words, without the quote block the pipeline appends.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

from langchain_core.documents import Document
from langchain_core.language_models import BaseChatModel
from langchain_core.retrievers import BaseRetriever
from sqlalchemy import select
from tqdm import tqdm

from affinage.core.datasets import KINDS, used_interactions, write_dataset
from affinage.core.decontamination import decontaminate, dedupe
from affinage.core.extraction import Embed, select_quotes
from affinage.core.grounding import groundedness
from affinage.core.pii import redact_pii
from affinage.core.prompts import (
    PROMPT_VERSION,
    generated_part,
    passage_embedder,
    prompt_messages,
)
from affinage.core.settings import Settings
from affinage.core.store import Store
from affinage.core.tables import Feedback, Interaction
from synth_data.filters import (
    cap_failures_per_user,
    groundedness_at_least,
    keep_if,
    length_ok,
    run_filters,
)
from synth_data.hardening import make_plant, obeying_answer, plant_among, rng_for
from synth_data.teacher import TeacherError, grounded_answer, paraphrase

log = logging.getLogger("affinage.synth")
NEGATIVE = {"thumbs_down", "correction_submitted", "ungrounded", "refusal", "rephrase", "human_request"}


@dataclass
class Item:
    """One training row before filtering, with what the filters need to judge it."""

    kind: str  # sft | preference | kto | heldout
    question: str
    answer: str  # the target (sft), chosen (preference) or completion (kto); a hardened row's failure's answer
    user: str | None
    interaction_id: str
    passages: list[str]
    from_teacher: bool
    row: dict = field(repr=False)
    hardened: bool = False  # its passages carry a planted instruction or link (``synth_data.hardening``)
    customer: str | None = None  # the end customer the interaction was about (erasure finds their rows by it)


@dataclass
class SynthResult:
    manifest: dict
    skipped: dict[str, int]
    golden: dict | None = None  # what the workspace's golden set holds, when synth built it (``synth_data.golden``)


def quoted(question: str, docs: list[Document], embed: Embed, settings: Settings) -> list[str]:
    """The passage sentences serving shows the model for this wording; when none is similar enough (serving would
    abstain, and the target comes from a person), the closest ones anyway: a row never teaches answering from
    nothing."""
    def pick(floor: float) -> list[str]:
        return [quote.sentence for quote in select_quotes(question, docs, embed, settings.quote_sentences, floor,
                                                          settings.allowed_link_domains)]

    return pick(settings.quote_min_similarity) or pick(-1.0)


def protected_questions(paths: list[Path]) -> list[str]:
    questions = []
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"protected question set not found: {path}")
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                questions.append(json.loads(line)["question"])
    return questions


def protected_paths(settings: Settings) -> list[Path]:
    """The question sets no training row may come near: the golden set (the operator's or the bundled one), the
    workspace's own golden set once built (``synth_data.golden``), and ``protected_sets``."""
    workspace = settings.workspace_golden_path
    return [settings.golden_path, *([workspace] if workspace.is_file() else []), *settings.protected_sets]


def pending(store: Store, used: set[str]) -> list[tuple[Interaction, list[Feedback]]]:
    """Interactions with a failure signal or feedback that no dataset has used yet (never eval traffic)."""
    with store.session() as session:
        rows = session.scalars(select(Interaction).where(Interaction.channel != "eval").order_by(Interaction.created_at))
        feedback: dict[str, list[Feedback]] = {}
        for f in session.scalars(select(Feedback).order_by(Feedback.created_at)):
            feedback.setdefault(f.interaction_id, []).append(f)
        return [(i, feedback.get(i.id, [])) for i in rows
                if i.id not in used and (i.signals or feedback.get(i.id))]


def build_items(interaction: Interaction, feedback: list[Feedback], retriever: BaseRetriever, teacher: BaseChatModel,
                settings: Settings, pii_counts: dict[str, int], skipped: dict[str, int], retry: list[str]) -> list[Item]:
    """The rows one interaction yields; one that cannot be answered yet yields none and goes on ``retry``."""
    def scrub(text: str) -> str:
        clean, counts = redact_pii(text)
        for kind, n in counts.items():
            pii_counts[kind] = pii_counts.get(kind, 0) + n
        return clean

    def retrieved(wording: str) -> list[Document]:
        return [d for d in retriever.invoke(wording) if d.metadata["score"] >= settings.min_score]

    def pick(wording: str) -> list[str]:
        """The quotes serving would show for this wording: from its own retrieval, so where a paraphrase retrieves
        other passages the row teaches the fact without them (held-out paraphrases missed it in just that case:
        their quotes lacked it); from the question's passages when its own retrieval finds none."""
        return quoted(wording, retrieved(wording) or docs, embed, settings)

    question, old_answer = scrub(interaction.question), generated_part(scrub(interaction.answer))
    docs = retrieved(interaction.question)
    embed = passage_embedder(retriever)
    picked = {question: quoted(question, docs, embed, settings)}  # per wording, picked once for every row
    prompt = prompt_messages(question, picked[question])
    passages = [d.page_content for d in docs]
    base = dict(question=question, user=interaction.user, interaction_id=interaction.id, passages=passages,
                customer=interaction.customer)
    items: list[Item] = []

    for f in feedback:  # unpaired good/bad answers, as given, for KTO
        if f.rating in ("up", "down"):
            items.append(Item("kto", answer=old_answer, from_teacher=False, row={
                "prompt": prompt, "completion": [{"role": "assistant", "content": old_answer}], "label": f.rating == "up"}, **base))

    if not any(s["kind"] in NEGATIVE for s in interaction.signals or []) and not any(f.correction for f in feedback):
        return items
    corrections = [f.correction for f in feedback if f.correction and f.review != "rejected"]
    if corrections:
        target, from_teacher = generated_part(scrub(corrections[-1])), False
    elif docs:
        try:
            target, from_teacher = scrub(grounded_answer(teacher, question, passages)), True
        except TeacherError as error:
            log.warning("teacher skipped an interaction", extra={"interaction_id": interaction.id, "error": str(error)})
            skipped["teacher_failed"] = skipped.get("teacher_failed", 0) + 1
            retry.append(interaction.id)
            return []
    else:
        skipped["knowledge_gap"] = skipped.get("knowledge_gap", 0) + 1  # nothing to ground an answer in: docs team
        retry.append(interaction.id)
        return []

    try:  # more than trained on: the rest are held out to test that the fact, not the wording, was learnt
        wanted = settings.paraphrases + settings.heldout_paraphrases
        rewordings = [scrub(q) for q in paraphrase(teacher, question, wanted)]
    except TeacherError:
        skipped["paraphrase_failed"] = skipped.get("paraphrase_failed", 0) + 1
        rewordings = []
    rewordings, held_out = rewordings[:settings.paraphrases], rewordings[settings.paraphrases:]
    for held in held_out:
        items.append(Item("heldout", answer=target, from_teacher=from_teacher, row={
            "question": held, "answer": target, "source": docs[0].metadata["source"] if docs else None,
            "interaction_id": interaction.id}, **{**base, "question": held}))
    wordings = [question, *rewordings]
    for q in wordings:
        if q not in picked:
            picked[q] = pick(q)
        messages = [*prompt_messages(q, picked[q]), {"role": "assistant", "content": target}]
        items.append(Item("sft", answer=target, from_teacher=from_teacher, row={"messages": messages},
                          **{**base, "question": q}))
    items += hardened_items(wordings, picked, target, from_teacher, base,
                            settings.injection_hardening if docs else 0)
    if old_answer.strip() and old_answer.strip() != target.strip():
        items.append(Item("preference", answer=target, from_teacher=from_teacher, row={
            "prompt": prompt, "chosen": [{"role": "assistant", "content": target}],
            "rejected": [{"role": "assistant", "content": old_answer}]}, **base))
    return items


def hardened_items(wordings: list[str], picked: dict[str, list[str]], target: str, from_teacher: bool, base: dict,
                   copies: int) -> list[Item]:
    """``copies`` SFT rows (and as many preference pairs) whose quoted sentences (``picked``: per wording) carry a
    plant among them, as a planted passage would reach an unscreened prompt, cycling through the wordings; the
    target stays the clean answer, or is a refusal where the row asks for the planted person's details. Seeded by
    the interaction, so a rebuild writes the same rows."""
    items = []
    for n in range(copies):
        wording = wordings[n % len(wordings)]
        rng = rng_for(f"{base['interaction_id']}:{n}")
        plant = make_plant(rng)
        question, answer = plant.question or wording, plant.refusal or target
        prompt = prompt_messages(question, plant_among(picked[wording], plant, rng))
        # the filters judge the failure's answer, so a refusal row goes where the rest of its failure goes
        fields = {**base, "question": question, "answer": target, "from_teacher": from_teacher, "hardened": True}
        items.append(Item("sft", row={"messages": [*prompt, {"role": "assistant", "content": answer}]}, **fields))
        items.append(Item("preference", row={"prompt": prompt, "chosen": [{"role": "assistant", "content": answer}],
                                             "rejected": [{"role": "assistant",
                                                           "content": obeying_answer(target, plant)}]}, **fields))
    return items


def dedupe_per_kind(items: list[Item]) -> tuple[list[Item], int]:
    """Near-copies within one kind; an SFT row and the preference pair built from the same answer both stay, and so
    does a row's hardened copy (same question and answer, planted passages)."""
    kept: list[Item] = []
    for kind in KINDS:
        for hardened in (False, True):
            group = [x for x in items if x.kind == kind and x.hardened == hardened]
            kept += dedupe(group, lambda x: f"{x.question}\n{x.answer}", threshold=0.9)[0]
    return kept, len(items) - len(kept)


def unseen_heldout(items: list[Item]) -> tuple[list[Item], int]:
    """Held-out questions worded like a trained one would test memory, not learning: they go (lexical check only,
    since a paraphrase means the same by design)."""
    trained = [x.question for x in items if x.kind == "sft"]
    held = [x for x in items if x.kind == "heldout"]
    unseen, dropped, _ = decontaminate(held, lambda x: x.question, trained)
    return [x for x in items if x.kind != "heldout"] + unseen, dropped


def synthesize(settings: Settings, store: Store, retriever: BaseRetriever, teacher: BaseChatModel, embed,
               teacher_name: str, base_model: str, progress: bool = True) -> SynthResult:
    """Build one dataset from everything not used before; raise ValueError when nothing is left to learn from."""
    protected = protected_questions(protected_paths(settings))
    todo = pending(store, used_interactions(settings.datasets_dir))
    if not todo:
        raise ValueError("no new failures or feedback to learn from since the last dataset")
    pii: dict[str, int] = {}
    skipped: dict[str, int] = {}
    retry: list[str] = []
    items: list[Item] = []
    order = {interaction.id: n for n, (interaction, _) in enumerate(todo)}  # the log's order: oldest first
    for interaction, feedback in tqdm(todo, desc="synth", unit="interaction", disable=not progress):
        items += build_items(interaction, feedback, retriever, teacher, settings, pii, skipped, retry)

    kept, report = run_filters(items, [
        ("length", lambda xs: keep_if(xs, lambda x: length_ok(x.question, 3, settings.max_message_chars)
                                      and length_ok(x.answer, 2, settings.max_message_chars))),
        ("groundedness", lambda xs: groundedness_at_least(
            xs, lambda x: (groundedness(x.answer, x.passages) or 0.0) if x.from_teacher else 1.0, settings.min_groundedness)),
        ("near_duplicates", dedupe_per_kind),
        ("decontamination", lambda xs: decontaminate(xs, lambda x: x.question, protected, embed=embed)),
        ("per_user_cap", lambda xs: cap_failures_per_user(
            xs, user=lambda x: x.user, failure=lambda x: x.interaction_id, kind=lambda x: x.kind,
            when=lambda x: order[x.interaction_id], share=settings.max_user_share, floor=settings.min_user_failures)),
        ("heldout_near_training", unseen_heldout),
    ])
    if not [x for x in kept if x.kind != "heldout"]:
        raise ValueError(f"every candidate item was filtered out ({json.dumps(report.dropped)}); nothing written")
    rows = {kind: [x.row for x in kept if x.kind == kind] for kind in KINDS}
    lineage = {**{kind: [x.interaction_id for x in kept if x.kind == kind] for kind in KINDS},
               "contributors": {x.interaction_id: x.user or "anonymous" for x in kept},  # for erasures: row -> source
               "customers": {x.interaction_id: x.customer for x in kept if x.customer}}
    manifest = write_dataset(settings.datasets_dir, rows, {
        "base_model": base_model,
        "teacher": teacher_name,
        "prompt_version": PROMPT_VERSION,
        "source_interaction_ids": [i.id for i, _ in todo if i.id not in retry],
        "contributors": sorted({x.user or "anonymous" for x in kept}),
        "filters": {"items_in": report.items_in, "items_out": report.items_out, "dropped": report.dropped,
                    "skipped_interactions": skipped, "pii_redacted": pii,
                    "per_user_cap": asdict(report.details["per_user_cap"])},
        "protected_questions": len(protected),
        "injection_hardening": {"per_failure": settings.injection_hardening,
                                "rows": {kind: sum(x.hardened for x in kept if x.kind == kind) for kind in KINDS}},
    }, lineage)
    return SynthResult(manifest, skipped)
