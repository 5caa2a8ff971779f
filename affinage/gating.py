"""`affinage gate ID`: the candidate and the active version answer the same held-out sets in one run.

Regression (golden set no worse, held-out paraphrases of the trained failures better), forgetting
(general-text perplexity, general instructions, KL from the base model), safety (planted instructions and
links, system-prompt extraction, PII leaks: no worse than active, both as the model wrote it and as served after
the output guards; PII leaks also under an absolute limit), each a stated test (``tuning.gate_tests``), and
drift (input drift of recent traffic by topic, output drift between the two versions). The verdict and report
land beside the candidate.

This module composes: it loads both versions' weights, builds one agent (``affinage.factory``) that serves each in
turn, and has it answer the sets (``agent.evaluation``); the active version's answers are kept for the cycle. What
it measures with and decides by is pure and lives in ``tuning``: the sets (``gate_sets``), the answer figures
(``answer_metrics``), the probes (``probes``), forgetting and drift statistics (``forgetting``, ``drift``), the
tests (``gate_tests``) and the checks (``decisions``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from datetime import datetime, timedelta, timezone

import numpy as np
from langchain_core.documents import Document
from langchain_core.messages import HumanMessage
from sqlalchemy import select

from affinage.core.atomic import atomic_write_text
from affinage.core.memory import bound_heap
from affinage.core.timeutil import as_utc
from affinage.core.chat_model import LocalChatModel
from affinage.core.datasets import list_datasets
from affinage.core.metrics import contains_fact
from affinage.core.model_files import serving_dtype
from affinage.core.extraction import candidates
from affinage.core.prompts import SYSTEM_PROMPT, generated_part, prompt_messages
from affinage.core.settings import Settings
from affinage.core.tables import Interaction
from affinage.factory import build_agent
from agent.evaluation import run_eval
from agent.link_guard import OutputGuard
from tuning.answer_metrics import answers_with_unsupported_links, knowledge_base_links, question_scores, unsupported_links
from tuning.decisions import decide, summarize
from tuning.drift import mmd_test, output_drift, per_topic_drift, stale_training_rows
from tuning.forgetting import mean_kl, perplexity
from tuning.gate_sets import Sets, gate_sets, trained_questions
from tuning.probes import attack_outcomes, probes_that_worked
from tuning.registry import Registry, RegistryError
from tuning.report import write_report
from tuning.serving import load_weights
from tuning.train import base_model

log = logging.getLogger("affinage.gates")
# Probes and general instructions answered this many at a time: about 2.8x the answers per second of one at a time
# with the default model on 2 CPU cores (16 of 16 answers the same as alone, greedy).
BATCH = 16


def own_words(results: list[dict]) -> list[dict]:
    """The results with each answer cut to what the model wrote: the quoted passage sentences after it are the
    same for both versions (retrieval is shared), so they would only dilute the difference the gates judge."""
    return [{**r, "answer": generated_part(r["answer"])} for r in results]


def as_served(answer: str, question: str, allowed: tuple[str, ...]) -> str:
    """What a user would receive of ``answer``: through the serving path's output guards (the prompt-leak guard,
    then the link policy ``allowed``)."""
    guard = OutputGuard(SYSTEM_PROMPT, question, allowed)
    return guard.feed(answer) + guard.finish()


def measure(agent, model, base, tokenizer, sets: Sets, known_links: frozenset[str], allowed: tuple[str, ...],
            progress: bool) -> dict:
    """One version's per-item outcomes on every held-out set (``base``: the base model's weights, for the KL;
    ``known_links``: the knowledge base's links; ``allowed``: the link policy), safety both as the model wrote it
    and as served."""
    golden = own_words(run_eval(agent, sets.golden, progress=progress))
    target = own_words(run_eval(agent, [{"question": r["question"], "answer": r["answer"], "source": r.get("source")}
                                        for r in sets.target], progress=progress)) if sets.target else []
    general_answers = agent.llm.answer_batch([[HumanMessage(row["instruction"])] for row in sets.general_instructions],
                                             BATCH, progress)
    raw = agent.llm.answer_batch([prompt_messages(  # the serving prompt, every probe sentence unscreened: the
        p["question"], [s for s, _ in candidates([Document(p["passage"])])])  # model's own susceptibility
        for p in sets.probes], BATCH, progress)
    probe_answers = {"model": raw, "as served": [as_served(a, p["question"], allowed) for a, p in zip(raw, sets.probes)]}
    answered = {"model": [{**r, "answer": generated_part(r["generated"])} for r in golden + target],
                "as served": golden + target}  # the agent's answers went through its output guards
    return {
        "golden": question_scores(golden),
        "target": question_scores(target) if target else None,
        "perplexity": perplexity(model, tokenizer, sets.general_text),
        "general": [contains_fact(a, row["expected"]) for a, row in zip(general_answers, sets.general_instructions)],
        "kl_from_base": mean_kl(model, base, tokenizer, sets.general_text),
        "safety": {view: attack_outcomes(sets.probes, answers) for view, answers in probe_answers.items()},
        "links": {view: answers_with_unsupported_links(answered[view], known_links) + [  # a probe's own planted
            bool(unsupported_links(a, [p["passage"]], known_links))  # link counts under its family, not here
            for a, p in zip(probe_answers[view], sets.probes)] for view in probe_answers},
        "answers": {"golden": golden, "general": general_answers, "probes": probe_answers},
    }


def fingerprint(settings: Settings, sets: Sets, known_links: frozenset[str]) -> str:
    """What an active version's measures depend on besides its weights: the sets, the knowledge base's links and
    every setting but the decision's own bounds (which do not change an answer)."""
    config = settings.model_dump(mode="json", exclude={name for name in type(settings).model_fields
                                                       if name.startswith("gate_") and name != "gate_golden_limit"})
    dtype = str(serving_dtype(settings.serving_dtype))  # 'auto' resolves by the machine's CPU
    material = json.dumps([config, dtype, dataclasses.asdict(sets), sorted(known_links)], sort_keys=True, default=str)
    return hashlib.sha256(material.encode()).hexdigest()[:16]


def active_measures(settings: Settings, active_id: str | None, key: str, compute) -> dict:
    """The active version's measures, computed once per cycle: a search of K candidates reuses them from
    ``<home>/runs/gate-active-<version>-<key>.json`` while the sets and settings (``key``) stay the same."""
    path = settings.home / "runs" / f"gate-active-{active_id or 'base'}-{key}.json"
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    measured = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(measured, ensure_ascii=False))
    return measured


def input_drift(settings: Settings, store, embed, since: datetime) -> dict:
    """Questions before ``since`` against those after, per topic (the top retrieved page's folder)."""
    with store.session() as session:
        rows = session.execute(select(Interaction.question, Interaction.retrieved, Interaction.created_at)
                               .where(Interaction.channel != "eval").order_by(Interaction.created_at)).all()
    since = as_utc(since)  # a caller's; the column reads back in UTC
    windows: dict[str, list] = {"reference": [], "recent": []}
    for question, retrieved, created in rows:
        topic = retrieved[0]["source"].split("/")[0].split("#")[0] if retrieved else "(no passage)"
        windows["recent" if created >= since else "reference"].append((question, topic))
    if min(len(windows["reference"]), len(windows["recent"])) < 2:
        return {"skipped": f"too little traffic to compare ({len(windows['reference'])} questions before "
                           f"{since:%Y-%m-%d}, {len(windows['recent'])} after)"}
    vectors = {name: np.asarray(embed([q for q, _ in items]), dtype=float) for name, items in windows.items()}
    overall = mmd_test(vectors["reference"], vectors["recent"], permutations=settings.drift_permutations)
    topics = per_topic_drift(vectors["reference"], vectors["recent"], [t for _, t in windows["reference"]],
                             [t for _, t in windows["recent"]], permutations=settings.drift_permutations)
    return {"since": since.isoformat(), "overall": overall.to_json(),
            "topics": {name: {"share_reference": t.share_reference, "share_recent": t.share_recent,
                              "p_value": t.test.p_value if t.test else None, "drifted": bool(t.test and t.test.drifted)}
                       for name, t in topics.items()}}


def run_gates(settings: Settings, version_id: str, progress: bool = True) -> dict:
    """Measure the candidate against the active version, record the verdict, write the report; returns it."""
    from transformers import AutoTokenizer  # loads torch: only a gate run pays for it, not every importer of the cycle

    registry = Registry.open(settings)
    version = registry.get(version_id)
    if version.state not in ("candidate", "gated-passed", "gated-failed"):
        raise RegistryError(f"version {version_id} is {version.state}; only candidates are gated")
    _, base_path = base_model(settings)
    bound_heap()  # the gates load two models and grow caches: big blocks in their own mappings, freed when done
    sets = gate_sets(settings, version.manifest)
    active_id = registry.active_id()

    tokenizer = AutoTokenizer.from_pretrained(str(base_path))
    dtype = serving_dtype(settings.serving_dtype)  # the gates measure what users would receive
    base = load_weights(base_path, registry, None, dtype)
    llm = LocalChatModel(base, tokenizer, version=None, model_name=base_path.name,
                         max_new_tokens=settings.max_new_tokens, temperature=settings.temperature,
                         repetition_penalty=settings.repetition_penalty, max_sentences=settings.max_answer_sentences)
    agent = build_agent(settings, llm=llm)  # one agent: both versions share the knowledge base and its retrieval
    known_links = knowledge_base_links(chunk.text for chunk in agent.retriever.index.chunks) \
        if agent.retriever.index else frozenset()
    allowed = agent.link_domains  # the link policy the factory resolved, as the service does

    def compute(side: str, version: str | None) -> dict:
        model = base if version is None else load_weights(base_path, registry, version, dtype)
        llm.swap(model, version)
        log.info("measuring", extra={"side": side})
        return measure(agent, model, base, tokenizer, sets, known_links, allowed, progress)

    measured = {"active": active_measures(settings, active_id, fingerprint(settings, sets, known_links),
                                          lambda: compute("active", active_id)),
                "candidate": compute("candidate", version_id)}
    checks = decide(settings, measured["active"], measured["candidate"])
    created = datetime.fromisoformat(version.manifest["created_at"])
    drift = input_drift(settings, agent.store, agent.retriever.embeddings.encode,
                        since=created - timedelta(days=settings.drift_window_days))
    report = write_report(version.path, version.manifest, checks, report_details(active_id, sets, measured, drift))
    registry.record_gate(version_id, report["passed"], {"report": "report.html", "failed": [
        f"{x.gate}: {x.name}" + (f" ({x.view})" if x.view else "") for x in checks if not x.passed]})
    return report


def report_details(active_id: str | None, sets: Sets, measured: dict, drift: dict) -> dict:
    """What the gate report shows beside the checks: the sets' sizes and which golden set, both sides' figures,
    output and input drift, the probes each side fell for, and a few answers side by side."""
    return {
        "active": active_id or "base",
        "sets": {"golden": len(sets.golden), "golden_origin": sets.golden_origin, "target": len(sets.target),
                 "target_dropped_as_near_training": sets.target_contaminated,
                 "general_text": len(sets.general_text), "general_instructions": len(sets.general_instructions),
                 "safety_probes": len(sets.probes)},
        "measures": {side: summarize(m) for side, m in measured.items()},
        "output_drift": output_drift(measured["active"]["answers"]["golden"], measured["candidate"]["answers"]["golden"]),
        "probes_that_worked": {side: probes_that_worked(sets.probes, m["answers"]["probes"]["model"])
                               for side, m in measured.items()},  # what the model itself fell for
        "drift": drift,
        "examples": [{"question": a["question"], "reference": a["reference"], "active": a["answer"], "candidate": b["answer"]}
                     for a, b in zip(measured["active"]["answers"]["golden"][:5],
                                     measured["candidate"]["answers"]["golden"][:5])],
    }


def traffic_drift(settings: Settings, store, embed, days: float) -> dict:
    """Drift of the last ``days`` of questions against everything before, and which training data went stale.

    A dataset row is stale when no recent question comes near it (cosine below ``stale_threshold``): the traffic
    it was built for has moved on. The worker reads ``drifted`` as a trigger for a training cycle.
    """
    since = datetime.now(timezone.utc) - timedelta(days=days)
    report = input_drift(settings, store, embed, since)
    with store.session() as session:
        recent = [q for (q,) in session.execute(select(Interaction.question).where(
            Interaction.channel != "eval", Interaction.created_at >= since))]
    stale = {}
    if recent:
        recent_vectors = np.asarray(embed(recent), dtype=float)
        for manifest in list_datasets(settings.datasets_dir)[-5:]:
            questions = trained_questions(settings.datasets_dir / manifest["id"])
            if questions:
                flagged = stale_training_rows(np.asarray(embed(questions), dtype=float), recent_vectors,
                                              settings.stale_threshold)
                stale[manifest["id"]] = {"rows": len(questions), "stale": len(flagged),
                                         "share": round(len(flagged) / len(questions), 3)}
    report["stale_datasets"] = stale
    report["drifted"] = bool(report.get("overall", {}).get("drifted"))
    return report
