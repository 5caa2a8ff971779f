"""The stages of one improvement cycle, shared by the commands and the worker: triage, immediate remedies, synth,
train, gates and the auto-promotion policy.

Each stage returns a small JSON record of what it did (the worker stores it on the job) and may run again after a
crash without doing its work twice: synth and train adopt what an interrupted attempt already wrote (training
itself resumes from its last checkpoint), the gates run again only on an ungated candidate.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

from affinage.core.settings import Settings
from affinage.core.store import Store
from synth_data.builder import SynthResult
from tuning.registry import Registry

Note = Callable[[str], None]
TRIAGE_DAYS = 30  # the window of `affinage failures` and the console's topics
MAX_TOPICS = 20  # topics kept on a job record
MAX_DOC_QUESTIONS = 5  # questions per knowledge gap kept on a job record


def build_dataset(settings: Settings, progress: bool = True, embeddings=None, agent=None, teacher=None) -> SynthResult:
    """`affinage synth`: one dataset from every failure and feedback no dataset has used yet. A caller that already
    holds the agent (`affinage demo`) passes it to spare loading the model again, and may pass its own teacher."""
    from affinage.factory import build_agent
    from agent.pipeline import model_version
    from synth_data.builder import synthesize
    from synth_data.teacher import load_teacher

    agent = agent or build_agent(settings, embeddings=embeddings)
    teacher = teacher or load_teacher(settings, local=agent.llm)
    return synthesize(settings, agent.store, agent.retriever, teacher, agent.retriever.embeddings.encode,
                      teacher_name=model_version(teacher), base_model=agent.model_version, progress=progress)


def triage_stage(store: Store, embed, note: Note) -> dict:
    """Topics of the last ``TRIAGE_DAYS`` of failures, each with its suggested remedy."""
    from agent.triage import triage

    topics = triage(store, embed, since=datetime.now(timezone.utc) - timedelta(days=TRIAGE_DAYS))
    note(f"{sum(t.count for t in topics)} failures in {len(topics)} topics over the last {TRIAGE_DAYS} days")
    return {"failures": sum(t.count for t in topics), "topics": [
        {"label": t.label, "count": t.count, "remedy": t.remedy, "doc_questions": t.doc_questions[:MAX_DOC_QUESTIONS]}
        for t in topics[:MAX_TOPICS]]}


def remedies_stage(store: Store, triaged: dict, note: Note) -> dict:
    """What fixes failures without training, and who must act: the example bank takes a correction the moment an
    operator approves it, and knowledge gaps need documentation; the worker reports both and approves nothing."""
    from agent.corrections import pending_corrections

    by_remedy = {remedy: [t["label"] for t in triaged["topics"] if t["remedy"] == remedy]
                 for remedy in ("knowledge_gap", "prompt_retrieval", "behaviour")}
    pending = len(pending_corrections(store))
    if pending:
        note(f"{pending} corrections wait for review (`affinage corrections`): approved, they fix answers at once")
    for topic in triaged["topics"]:
        if topic["remedy"] == "knowledge_gap":
            note(f"knowledge gap '{topic['label']}': document {'; '.join(topic['doc_questions'])}")
    return {"corrections_pending": pending, **by_remedy}


def synth_stage(settings: Settings, store: Store, started_at: str, note: Note, embeddings=None,
                progress: bool = True, agent=None, teacher=None) -> dict:
    """A dataset from the unused failures; one written since ``started_at`` is an interrupted attempt's, adopted."""
    from synth_data.builder import pending
    from affinage.core.datasets import list_datasets, used_interactions

    earlier = [m for m in list_datasets(settings.datasets_dir) if m["created_at"] >= started_at]
    if earlier:
        note(f"dataset {earlier[0]['id']} was written by an earlier attempt: using it")
        return {"dataset": earlier[0]["id"], "counts": earlier[0]["counts"]}
    if not pending(store, used_interactions(settings.datasets_dir)):
        note("no failures or feedback that no dataset has used: nothing to train")
        return {"dataset": None, "outcome": "nothing to train"}
    manifest = build_dataset(settings, progress, embeddings, agent, teacher).manifest
    note(f"dataset {manifest['id']}: " + ", ".join(f"{n} {kind}" for kind, n in manifest["counts"].items()))
    return {"dataset": manifest["id"], "counts": manifest["counts"]}


def train_stage(settings: Settings, dataset_id: str, note: Note, progress: bool = True) -> dict:
    """A candidate from the dataset with ``worker_method``; one already registered from it is adopted.

    A dataset an erasure superseded since the job began is replaced by the one that superseded it, and an active
    version flagged as trained on erased data is never built upon: training starts from the base model."""
    from synth_data.erasure import current_dataset
    from tuning.train import CONTINUES, train

    method = settings.worker_method
    current = current_dataset(settings.datasets_dir, dataset_id)
    if current is None:
        raise ValueError(f"dataset {dataset_id} was erased: every row it held came from erased data")
    if current != dataset_id:
        note(f"dataset {dataset_id} was superseded by {current} after an erasure: training on that")
        dataset_id = current
    registry = Registry.open(settings)
    for version in registry.list():
        trained_on = [d["id"] for d in version.manifest.get("datasets", [])]
        if version.manifest.get("method") == method and dataset_id in trained_on:
            note(f"candidate {version.id} was trained from {dataset_id} by an earlier attempt: using it")
            return {"candidate": version.id, "method": method}
    config = settings.worker_train_config
    active = registry.get(registry.active_id()) if registry.active_id() else None
    if method in CONTINUES and active is not None and active.trained_on_erased:
        config = from_base_config(settings, method)
        note(f"the active version {active.id} was trained on erased data: the candidate starts from the base model")
    version = train(settings, method, dataset_id, config, progress=progress)
    metrics = version.manifest["metrics"]
    note(f"candidate {version.id}: {metrics['steps']} steps"
         + (f", resumed from {version.manifest['resumed_from']}" if version.manifest.get("resumed_from") else ""))
    return {"candidate": version.id, "method": method, "resumed_from": version.manifest.get("resumed_from"),
            "steps": metrics["steps"]}


def from_base_config(settings: Settings, method: str) -> Path:
    """``worker_train_config`` with ``start_from = "base"``, written beside the runs (same values, so a resumed run
    finds its checkpoints)."""
    from affinage.core.atomic import atomic_write_text
    from tuning.config import read_config_file

    source = settings.worker_train_config
    values = read_config_file(source) if source is not None else {}
    path = settings.home / "runs" / f"{method}-from-base.json"
    atomic_write_text(path, json.dumps({**values, "start_from": "base"}, indent=2, sort_keys=True))
    return path


def gate_stage(settings: Settings, candidate: str, note: Note, progress: bool = True) -> dict:
    """The gates' verdict; a candidate gated by an interrupted attempt keeps its report."""
    from tuning.gates import run_gates

    version = Registry.open(settings).get(candidate)
    if version.state == "candidate":
        report = run_gates(settings, candidate, progress=progress)
    else:
        report = json.loads((version.path / "report.json").read_text(encoding="utf-8"))
    failed = [f"{c['gate']}: {c['name']}" for c in report["checks"] if not c["passed"]]
    note(f"{candidate} passed every gate" if report["passed"] else f"{candidate} failed: {'; '.join(failed)}")
    return {"passed": report["passed"], "failed": failed, "checks": report["checks"]}


def clears_margin(check: dict, margin: float) -> bool:
    """A passed check with room to spare: a score (a ``>=`` rule: F1, ROUGE-L, accuracy, shares, all in [0, 1])
    at least ``margin`` above its floor; an upper bound (``<=``: perplexity, KL, attack and link rates) at least
    ``margin`` times the bound below it. Any other rule never clears."""
    if not check["passed"]:
        return False
    if check["rule"].startswith(">="):
        return check["after"] >= check["threshold"] + margin
    if check["rule"].startswith("<="):
        return check["after"] <= check["threshold"] - margin * abs(check["threshold"])
    return False


def passes_by_margin(checks: list[dict], margin: float) -> list[str]:
    """The checks that keep a candidate from promotion under ``gates_pass_by_margin`` (none: promote)."""
    if not checks:
        return ["no gate checks"]
    return [f"{c['gate']}: {c['name']}" for c in checks if not clears_margin(c, margin)]


def promote_stage(settings: Settings, candidate: str, gate: dict, note: Note) -> dict:
    """Leave the candidate for an operator, or, under the ``auto_promote`` policy, approve and promote it in the
    registry as ``policy:<name>`` so the audit log records it like a person's decision."""
    registry = Registry.open(settings)
    policy, margin = settings.auto_promote, settings.auto_promote_margin
    if not gate["passed"]:
        return {"outcome": "gates failed", "policy": policy}
    if policy == "off":
        note(f"{candidate} awaits an operator's approval (auto_promote is off)")
        return {"outcome": "awaiting approval", "policy": policy}
    short = passes_by_margin(gate["checks"], margin)
    if short:
        note(f"{candidate} awaits an operator's approval: not clear of its bounds by {margin:g} on {'; '.join(short)}")
        return {"outcome": "awaiting approval", "policy": policy, "short_of_margin": short}
    actor = f"policy:{policy}"
    state = registry.get(candidate).state
    if state == "gated-passed":
        registry.decide(candidate, True, actor=actor,
                        comment=f"auto-promotion: every gate check cleared its bound by a margin of {margin:g}")
        state = "approved"
    if state == "approved":
        registry.promote(candidate, actor=actor)
        state = "active"
    if state != "active":  # an operator decided first
        note(f"{candidate} is {state}: left as the operator decided")
        return {"outcome": f"left {state}", "policy": policy}
    note(f"{candidate} promoted by {actor}")
    return {"outcome": "promoted", "policy": policy}
