"""One improvement cycle, orchestrated once for `affinage worker` and `affinage demo`: triage -> immediate remedies
-> synth -> search (K candidates, each trained and gated: ``affinage.search``) -> promotion, each stage a function
here, run in order by ``run_cycle``.

Each stage returns a small JSON record of what it did and may run again after a crash without doing its work
twice: synth adopts the dataset an interrupted attempt wrote, the search continues its study (finished trials are
neither trained nor gated again, and training resumes from its last checkpoint). ``run_cycle`` skips the stages
whose records it is given and stops after a synth that found nothing to train on. What differs between callers goes in its ``Hooks``
(the worker keeps every record on a durable job and checks its lease; the demo times the stages and acts as the
operator) and in its ``Cycle`` (the demo lends synth its loaded agent and a recorded teacher, and approves every
candidate that passed its gates instead of following the ``auto_promote`` policy).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

from affinage.core.datasets import list_datasets, used_interactions
from affinage.core.settings import Settings
from affinage.core.store import Store
from affinage.core.timeutil import utcnow
from affinage.factory import build_agent
from affinage.search import search_stage
from agent.corrections import pending_corrections
from agent.pipeline import model_version
from agent.triage import triage
from synth_data.builder import SynthResult, pending, synthesize
from synth_data.golden import Passage, build_workspace_golden
from synth_data.teacher import load_teacher
from tuning.decisions import passes_by_margin
from tuning.registry import Registry

Note = Callable[[str], None]
STAGES = ("triage", "remedies", "synth", "search", "promote")
TRIAGE_DAYS = 30  # the window of `affinage failures` and the console's topics
MAX_TOPICS = 20  # topics kept on a job record
MAX_DOC_QUESTIONS = 5  # questions per knowledge gap kept on a job record


@dataclass(frozen=True)
class Approver:
    """Who approves and promotes every candidate that passed its gates, in place of the ``auto_promote`` policy
    (`affinage demo` acts as the operator), and the comment the audit log keeps."""

    actor: str
    comment: str


@dataclass
class Cycle:
    """What one cycle runs with."""

    settings: Settings
    store: Store
    load_embeddings: Callable[[], Any]  # the embedder, fetched when a stage needs it: a retrain job never does
    progress: bool = True
    agent: Any = None  # an agent already loaded, lent to synth instead of loading the model again
    teacher: Any = None  # synth's teacher; by default ``teacher_model``, else the agent's own model
    approver: Approver | None = None


class Hooks:
    """What the caller of ``run_cycle`` does around the stages; here, nothing."""

    def note(self, stage: str, line: str) -> None:
        """A progress line of ``stage``."""

    def save(self, outputs: dict) -> None:
        """Keep the records so far where a later attempt finds them (synth saves when it starts)."""

    def before(self, stage: str, number: int) -> None:
        """``stage`` (``number`` from 0, of ``len(STAGES)``) is about to run; raising here stops the cycle."""

    def around(self, stage: str) -> AbstractContextManager:
        """Entered around the stage and its ``after``."""
        return nullcontext()

    def after(self, stage: str, number: int, outputs: dict) -> None:
        """``stage``'s record is in ``outputs``."""


def run_cycle(cycle: Cycle, hooks: Hooks, outputs: dict | None = None) -> dict:
    """Run, in order, the stages that have no record in ``outputs`` (an earlier attempt did those), stopping after
    a synth that found nothing to train on; returns every record, with the last ``outcome`` a stage named."""
    outputs = dict(outputs or {})
    outputs.setdefault("cycle_started_at", utcnow().isoformat())  # what cycle_budget_minutes counts from
    for number, stage in enumerate(STAGES):
        if stage in outputs:
            continue  # done by an earlier attempt
        hooks.before(stage, number)
        with hooks.around(stage):
            record = run_stage(cycle, hooks, stage, outputs)
            outputs = {**outputs, stage: record}
            if "outcome" in record:
                outputs["outcome"] = record["outcome"]
            hooks.after(stage, number, outputs)
        if stage == "synth" and record["dataset"] is None:
            break
    return outputs


def run_stage(cycle: Cycle, hooks: Hooks, stage: str, outputs: dict) -> dict:
    """One stage, from the records of the stages before it."""
    settings, store, progress = cycle.settings, cycle.store, cycle.progress
    note = lambda line: hooks.note(stage, line)  # noqa: E731
    if stage == "triage":
        return triage_stage(store, cycle.load_embeddings().encode, note)
    if stage == "remedies":
        return remedies_stage(store, outputs["triage"], note)
    if stage == "synth":
        if "synth_started_at" not in outputs:  # saved first, so a later attempt adopts what this one writes
            outputs["synth_started_at"] = utcnow().isoformat()
            hooks.save(outputs)
        return synth_stage(settings, store, outputs["synth_started_at"], note, cycle.load_embeddings(), progress,
                           cycle.agent, cycle.teacher)
    if stage == "search":
        return search_stage(settings, outputs["synth"]["dataset"], outputs["cycle_started_at"], note, progress)
    return promote_stage(settings, outputs["search"]["candidate"], outputs["search"], note, cycle.approver)


def build_dataset(settings: Settings, progress: bool = True, embeddings=None, agent=None, teacher=None) -> SynthResult:
    """`affinage synth`: one dataset from every failure and feedback no dataset has used yet. A caller that already
    holds the agent (`affinage demo`) passes it to spare loading the model again, and may pass its own teacher."""
    agent = agent or build_agent(settings, embeddings=embeddings)
    teacher = teacher or load_teacher(settings, local=agent.llm)
    golden = None
    if settings.golden_set is None:  # no operator's set: the workspace's own, built first so synth holds it out
        index = agent.retriever.index
        passages = [Passage(c.source, c.text) for c in index.chunks] if index else []
        golden = build_workspace_golden(settings, agent.store, passages, teacher, agent.retriever.embeddings.encode)
    result = synthesize(settings, agent.store, agent.retriever, teacher, agent.retriever.embeddings.encode,
                        teacher_name=model_version(teacher), base_model=agent.model_version, progress=progress)
    result.golden = golden
    return result


def triage_stage(store: Store, embed, note: Note) -> dict:
    """Topics of the last ``TRIAGE_DAYS`` of failures, each with its suggested remedy."""
    topics = triage(store, embed, since=datetime.now(timezone.utc) - timedelta(days=TRIAGE_DAYS))
    note(f"{sum(t.count for t in topics)} failures in {len(topics)} topics over the last {TRIAGE_DAYS} days")
    return {"failures": sum(t.count for t in topics), "topics": [
        {"label": t.label, "count": t.count, "remedy": t.remedy, "doc_questions": t.doc_questions[:MAX_DOC_QUESTIONS]}
        for t in topics[:MAX_TOPICS]]}


def remedies_stage(store: Store, triaged: dict, note: Note) -> dict:
    """What fixes failures without training, and who must act: the example bank takes a correction the moment an
    operator approves it, and knowledge gaps need documentation; the worker reports both and approves nothing."""
    by_remedy = {remedy: [t["label"] for t in triaged["topics"] if t["remedy"] == remedy]
                 for remedy in ("knowledge_gap", "prompt_retrieval", "behaviour")}
    waiting = len(pending_corrections(store))
    if waiting:
        note(f"{waiting} corrections wait for review (`affinage corrections`): approved, they fix answers at once")
    for topic in triaged["topics"]:
        if topic["remedy"] == "knowledge_gap":
            note(f"knowledge gap '{topic['label']}': document {'; '.join(topic['doc_questions'])}")
    return {"corrections_pending": waiting, **by_remedy}


def synth_stage(settings: Settings, store: Store, started_at: str, note: Note, embeddings=None,
                progress: bool = True, agent=None, teacher=None) -> dict:
    """A dataset from the unused failures; one written since ``started_at`` is an interrupted attempt's, adopted."""
    earlier = [m for m in list_datasets(settings.datasets_dir) if m["created_at"] >= started_at]
    if earlier:
        note(f"dataset {earlier[0]['id']} was written by an earlier attempt: using it")
        return {"dataset": earlier[0]["id"], "counts": earlier[0]["counts"]}
    if not pending(store, used_interactions(settings.datasets_dir)):
        note("no failures or feedback that no dataset has used: nothing to train")
        return {"dataset": None, "outcome": "nothing to train"}
    result = build_dataset(settings, progress, embeddings, agent, teacher)
    manifest = result.manifest
    if result.golden:
        note(f"workspace golden set: {result.golden['thumbs_up']} thumbs-up + {result.golden['knowledge_base']} "
             f"from the knowledge base ({result.golden['added']} new)")
    note(f"dataset {manifest['id']}: " + ", ".join(f"{n} {kind}" for kind, n in manifest["counts"].items()))
    record = {"dataset": manifest["id"], "counts": manifest["counts"]}
    return {**record, "golden": result.golden} if result.golden else record


def promote_stage(settings: Settings, candidate: str, gate: dict, note: Note, approver: Approver | None = None) -> dict:
    """Leave the candidate for an operator, or, under the ``auto_promote`` policy, approve and promote it in the
    registry as ``policy:<name>`` so the audit log records it like a person's decision. An ``approver`` approves
    and promotes every candidate that passed its gates, whatever the policy."""
    policy, margin = settings.auto_promote, settings.auto_promote_margin
    if not gate["passed"]:
        return {"outcome": "gates failed", "policy": policy}
    if approver is None:
        if policy == "off":
            note(f"{candidate} awaits an operator's approval (auto_promote is off)")
            return {"outcome": "awaiting approval", "policy": policy}
        short = passes_by_margin(gate["checks"], margin)
        if short:
            note(f"{candidate} awaits an operator's approval: not clear of its bounds by {margin:g} on {'; '.join(short)}")
            return {"outcome": "awaiting approval", "policy": policy, "short_of_margin": short}
        record = {"policy": policy}
        approver = Approver(f"policy:{policy}",
                            f"auto-promotion: every gate check cleared its bound by a margin of {margin:g}")
    else:
        record = {"approver": approver.actor}
    return {"outcome": approve_and_promote(Registry.open(settings), candidate, approver, note), **record}


def approve_and_promote(registry: Registry, candidate: str, approver: Approver, note: Note) -> str:
    """Approve the candidate unless someone did, then promote it; returns the outcome (``promoted``, also for one
    a rerun finds active already, or ``left <state>`` for one an operator decided otherwise first)."""
    state = registry.get(candidate).state
    if state == "gated-passed":
        registry.decide(candidate, True, actor=approver.actor, comment=approver.comment)
        state = "approved"
    if state == "approved":
        registry.promote(candidate, actor=approver.actor)
        state = "active"
    if state != "active":  # an operator decided first
        note(f"{candidate} is {state}: left as the operator decided")
        return f"left {state}"
    note(f"{candidate} promoted by {approver.actor}")
    return "promoted"
