"""`affinage demo`: the whole loop once, on the demo knowledge base, in a fresh workspace.

Support traffic is replayed through the agent (so every answer is logged), a simulated support agent rates each
answer as the API would record it (thumbs-up when it holds the line's key fact, else thumbs-down with the line's
reference answer as the correction), an operator approves the corrections, and one improvement cycle runs through
the stages the worker runs (`affinage.cycle`). A candidate that passes its gates is approved and promoted as actor
``demo``. The held-out paraphrases synth wrote (never trained on) are then asked of four set-ups, so that what the
example bank fixed and what training fixed are told apart.
"""

from __future__ import annotations

import json
import sys
import textwrap
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage
from langchain_core.outputs import ChatGeneration, ChatResult

from affinage.core.jsonl import numbered_lines
from affinage.core.settings import Settings

DEMO = Path(__file__).resolve().parent / "demo"
TRAFFIC = DEMO / "traffic.jsonl"
ACTOR = "demo"
# Sized so the whole demo stays well under 30 minutes on 2 CPU cores with the default model: two trained
# paraphrases per failure (plus one held out), two hardened copies of each failure (the default is one: with so few
# rows, one did not outweigh the copying that training teaches), five golden questions per gate run. A config.toml
# that sets any of these keys wins.
DEMO_SETTINGS = {"paraphrases": 2, "gate_golden_limit": 5, "drift_permutations": 100, "injection_hardening": 2}
# Sixty steps of two packed rows, about three epochs over the 43 conversations (9 failures, each with its correction
# on two paraphrases and the question, and 2 hardened copies): with answer-only loss on the CPU, LoRA runs at ~180
# tokens/s, so about 8 minutes of training. Forty steps with one hardened copy per failure fell short of the
# target-F1 margin and repeated a planted link.
DEMO_RUN_CONFIG = {"max_steps": 60, "batch_size": 2, "learning_rate": 2e-4, "eval_steps": 60, "save_steps": 60,
                   "early_stopping_patience": 0}
VARIANTS = (("base", "base model, curated examples only (before)"),
            ("bank", "base model + approved corrections in the example bank"),
            ("trained", "trained version, curated examples only (training alone)"),
            ("served", "trained version + example bank (what users get now)"))


def read_traffic(path: Path) -> list[dict]:
    """Lines of {question, answer, key_fact, source?, paraphrases?}; a bad line is named by number."""
    if not path.is_file():
        raise FileNotFoundError(f"traffic file not found: {path}")
    rows = []
    for number, row in numbered_lines(path):
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{number}: expected a JSON object")
        for key in ("question", "answer", "key_fact"):
            if not isinstance(row.get(key), str) or not row[key].strip():
                raise ValueError(f"{path}:{number}: '{key}' must be a non-empty string")
        if not isinstance(row.get("paraphrases", []), list):
            raise ValueError(f"{path}:{number}: 'paraphrases' must be a list of strings")
        rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no traffic")
    return rows


class RecordedTeacher(BaseChatModel):
    """Replays paraphrases a stronger teacher wrote for the traffic questions; anything else goes to ``fallback``.

    SmolLM2-135M answers a request to paraphrase instead of paraphrasing, which would leave synth with no held-out
    set; a real deployment points ``teacher_model`` at a larger model instead.
    """

    recorded: dict[str, list[str]]
    fallback: Any

    @property
    def _llm_type(self) -> str:
        return "recorded-teacher"

    @property
    def model_name(self) -> str:
        return f"recorded paraphrases + {getattr(self.fallback, 'model_name', type(self.fallback).__name__)}"

    def _generate(self, messages, stop=None, run_manager=None, **kwargs) -> ChatResult:
        from synth_data.teacher import PARAPHRASE_SYSTEM

        question = str(messages[-1].content).rsplit("\n", 1)[-1].strip()
        if messages[0].content == PARAPHRASE_SYSTEM and question in self.recorded:
            return ChatResult(generations=[ChatGeneration(message=AIMessage("\n".join(self.recorded[question])))])
        return ChatResult(generations=[ChatGeneration(message=self.fallback.invoke(messages, stop=stop, **kwargs))])


@dataclass
class Clock:
    """Wall time per stage, printed as each ends."""

    echo: Callable[[str], None]
    stages: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)

    @contextmanager
    def stage(self, name: str):
        self.echo(f"[{minutes(time.perf_counter() - self.started)}] {name} ...")
        began = time.perf_counter()
        yield
        self.stages[name] = round(time.perf_counter() - began, 1)
        self.echo(f"[{minutes(time.perf_counter() - self.started)}] {name} done in {minutes(self.stages[name])}")


def minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}m{seconds % 60:04.1f}s"


def check_fresh(settings: Settings) -> None:
    """The figures mean something only on a workspace that has seen nothing but this demo."""
    for path in (settings.home / "affinage.db", settings.index_dir, settings.datasets_dir, settings.registry_dir):
        if path.exists():
            raise ValueError(f"the demo needs a fresh workspace, but {path} exists: pass --home with a new folder")


def demo_settings(settings: Settings) -> Settings:
    """The demo's sizes for every key the user did not set, and its run config unless one is configured."""
    overrides = {k: v for k, v in DEMO_SETTINGS.items() if k not in settings.model_fields_set}
    if settings.worker_train_config is None:
        run = settings.home / "demo-run.toml"
        run.parent.mkdir(parents=True, exist_ok=True)
        run.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in DEMO_RUN_CONFIG.items()), encoding="utf-8")
        overrides["worker_train_config"] = run
    return settings.model_copy(update=overrides)


def curated_only(agent):
    """The same agent without the corrections operators approved: the example bank as it was before feedback."""
    from agent.example_bank import ExampleBank
    from agent.pipeline import SupportAgent

    class CuratedBank(ExampleBank):
        def all(self):
            return [e for e in super().all() if e.origin != "correction"]

    return SupportAgent(agent.settings, agent.retriever, agent.llm, agent.store,
                        CuratedBank(agent.store, agent.retriever.embeddings))


def measure(agent, heldout: list[dict], corrections: set[str], progress: bool) -> dict:
    """Held-out figures of one set-up, and how many answers were an approved correction word for word."""
    from agent.evaluation import run_eval, score

    results = run_eval(agent, heldout, progress=progress)
    summary = {k: v for k, v in score(results).items() if k in ("n", "hit@3", "token_f1", "rouge_l", "key_fact_recall")}
    summary["verbatim_from_bank"] = sum(r["answer"].strip() in corrections for r in results)
    summary["answers"] = [{"question": r["question"], "answer": r["answer"]} for r in results]
    return summary


def forgetting(report: dict) -> dict:
    """The forgetting gate's figures, active (before) against candidate, from the gate report."""
    active, candidate = report["measures"]["active"], report["measures"]["candidate"]
    return {"perplexity_before": active["perplexity"], "perplexity_after": candidate["perplexity"],
            "perplexity_change": candidate["perplexity"] / active["perplexity"] - 1,
            "kl_from_base": candidate["kl_from_base"],
            "general_before": active["general"], "general_after": candidate["general"],
            "checks": [c for c in report["checks"] if c["gate"] == "forgetting"]}


def safety(report: dict) -> dict:
    """The safety gate's checks and the probes each side fell for, from the gate report: what a refusal rests on."""
    worked = report["probes_that_worked"]
    return {"probes": report["sets"]["safety_probes"], "worked_active": len(worked["active"]),
            "worked_candidate": worked["candidate"],
            "checks": [c for c in report["checks"] if c["gate"] == "safety"]}


def run_demo(settings: Settings, traffic_path: Path = TRAFFIC, progress: bool = True,
             echo: Callable[[str], None] | None = None) -> dict:
    """The demo end to end; returns every figure it printed."""
    from agent.corrections import pending_corrections, review_correction
    from affinage.factory import build_agent
    from agent.feedback import record_feedback
    from affinage.core.metrics import contains_fact
    from affinage.core.store import Store
    from affinage.core.timeutil import utcnow
    from retrieval.embeddings import SentenceEmbeddings
    from retrieval.index import ingest
    from affinage import cycle
    from tuning.gates import read_jsonl
    from tuning.registry import Registry
    from tuning.serving import load_weights
    from tuning.train import base_model

    echo = echo or (lambda line: print(line, file=sys.stderr, flush=True))
    traffic = read_traffic(traffic_path)
    check_fresh(settings)
    settings = demo_settings(settings)
    clock = Clock(echo)
    note = lambda line: echo(f"    {line}")  # noqa: E731 - the stages' progress lines, indented under the stage
    out: dict = {"home": str(settings.home), "traffic": len(traffic)}

    with clock.stage("setup: ingest the demo knowledge base, load the models"):
        embeddings = SentenceEmbeddings(settings.embedder)
        report = ingest(settings.index_dir, [DEMO / "kb"], embeddings, settings.chunk_chars,
                        settings.chunk_overlap_chars, progress=progress)
        store = Store(settings.db_url)
        agent = build_agent(settings, embeddings=embeddings, store=store)
        curated = agent.examples.import_jsonl(DEMO / "examples.jsonl", added_by=ACTOR)
        note(f"{len(report.added)} pages, {report.chunks} chunks; {curated} curated examples; "
             f"model {agent.model_version}")
        out["model"] = agent.model_version

    by_interaction: dict[str, dict] = {}
    with clock.stage(f"traffic: {len(traffic)} support questions, rated by a simulated support agent"):
        for number, row in enumerate(traffic):
            user = f"demo-agent-{number % 3 + 1}"
            answer = agent.ask(row["question"], channel="api", user=user)
            by_interaction[answer.interaction_id] = row
            good = contains_fact(answer.answer, row["key_fact"])
            if good:
                record_feedback(store, answer.interaction_id, "up", user=user)
            else:
                record_feedback(store, answer.interaction_id, "down", correction=row["answer"],
                                comment=f"the answer should say {row['key_fact']!r}", user=user)
            note(f"{'up  ' if good else 'DOWN'} {row['question'][:70]}")
    out["thumbs_down"] = len(pending_corrections(store))
    out["thumbs_up"] = len(traffic) - out["thumbs_down"]

    with clock.stage("triage and immediate remedies"):
        triaged = cycle.triage_stage(store, embeddings.encode, note)
        out["remedies"] = cycle.remedies_stage(store, triaged, note)
        approved = [review_correction(store, f.id, True, reviewer=ACTOR) for f, _ in pending_corrections(store)]
        corrections = {e.answer.strip() for e in approved}
        note(f"operator ({ACTOR}) approved {len(approved)} corrections: they are in the example bank now")

    with clock.stage("synth: dataset from the failures"):
        teacher = RecordedTeacher(recorded={r["question"]: r.get("paraphrases", []) for r in traffic},
                                  fallback=agent.llm)
        synth = cycle.synth_stage(settings, store, utcnow().isoformat(), note, embeddings, progress, agent=agent,
                                  teacher=teacher)
        if synth["dataset"] is None:
            raise ValueError("no thumbs-down in the traffic: the base model answered every question; nothing to train")
        out["dataset"] = synth
        heldout = [{**row, "key_fact": by_interaction.get(row.get("interaction_id"), {}).get("key_fact")}
                   for row in read_jsonl(settings.datasets_dir / synth["dataset"] / "heldout.jsonl")]
        note(f"{len(heldout)} held-out paraphrases (never trained on) to measure before and after")
    if not heldout:
        raise ValueError(f"dataset {synth['dataset']} has no held-out paraphrases: the traffic needs 'paraphrases' "
                         f"(more than paraphrases = {settings.paraphrases} per question)")

    measured: dict[str, dict] = {}
    with clock.stage("before: held-out paraphrases on the base model"):
        measured["base"] = measure(curated_only(agent), heldout, corrections, progress)
        measured["bank"] = measure(agent, heldout, corrections, progress)

    with clock.stage("train: LoRA SFT candidate"):
        trained = cycle.train_stage(settings, synth["dataset"], note, progress)
        candidate = trained["candidate"]
        out["candidate"] = trained

    with clock.stage("gates: regression, forgetting, safety, drift"):
        gate = cycle.gate_stage(settings, candidate, note, progress)
        registry = Registry.open(settings, store)
        version = registry.get(candidate)
        gate_report = json.loads((version.path / "report.json").read_text(encoding="utf-8"))
        out["gates"] = {"passed": gate["passed"], "failed": gate["failed"], "report": str(version.path / "report.html"),
                        "forgetting": forgetting(gate_report), "safety": safety(gate_report)}

    with clock.stage("decide: approve and promote, or leave the candidate"):
        if gate["passed"]:
            registry.decide(candidate, True, actor=ACTOR, comment="affinage demo: every gate passed")
            registry.promote(candidate, actor=ACTOR)
            agent.watcher.check()  # what a running service does within registry_poll_seconds
            out["promoted"] = True
            note(f"{candidate} approved and promoted by {ACTOR}; now serving {agent.model_version}")
        else:
            agent.llm.swap(load_weights(base_model(settings)[1], registry, candidate), candidate)
            out["promoted"] = False
            note(f"{candidate} is NOT promoted (failed: {'; '.join(gate['failed'])}); measured as a candidate only")

    with clock.stage("after: held-out paraphrases on the trained version"):
        measured["trained"] = measure(curated_only(agent), heldout, corrections, progress)
        measured["served"] = measure(agent, heldout, corrections, progress)

    out["heldout"] = measured
    out["wall_s"] = {**clock.stages, "total": round(time.perf_counter() - clock.started, 1)}
    return out


def check_lines(checks: list[dict]) -> list[str]:
    return [f"  {'pass' if c['passed'] else 'FAIL'} {c['name']} ({c['rule']})" for c in checks]


def render(result: dict) -> str:
    """The summary a person reads at the end of the demo."""
    m, g, data = result["heldout"], result["gates"], result["dataset"]
    f, s = g["forgetting"], g["safety"]
    verdict = "PASSED" if g["passed"] else "FAILED: " + "; ".join(g["failed"])
    fmt = lambda v: "  n/a " if v is None else f"{v:6.3f}"  # noqa: E731
    lines = [f"affinage demo on {result['model']} in {result['home']}",
             f"traffic: {result['traffic']} questions, {result['thumbs_up']} thumbs-up, {result['thumbs_down']} "
             f"thumbs-down with corrections (approved into the example bank)",
             f"dataset {data['dataset']}: " + ", ".join(f"{n} {k}" for k, n in data["counts"].items()),
             f"candidate {result['candidate']['candidate']}: gates {verdict}; "
             f"{'approved and promoted by demo' if result['promoted'] else 'not promoted'}",
             "",
             f"held-out paraphrases of the failures (n={m['base']['n']}, never trained on):",
             f"  {'set-up':58} {'token-F1':>8} {'ROUGE-L':>8} {'key-fact':>8} {'hit@3':>6}  verbatim from bank"]
    for key, label in VARIANTS:
        row = m[key]
        lines.append(f"  {label:58} {fmt(row['token_f1']):>8} {fmt(row['rouge_l']):>8} "
                     f"{fmt(row['key_fact_recall']):>8} {fmt(row['hit@3']):>6}  {row['verbatim_from_bank']}/{row['n']}")
    lines += ["  the example bank's share: 'base' -> '+ approved corrections'; training's share: 'base' -> 'trained'.",
              "",
              f"forgetting (gate report): general-text perplexity {f['perplexity_before']:.3f} -> "
              f"{f['perplexity_after']:.3f} ({f['perplexity_change']:+.1%}); mean KL from base "
              f"{f['kl_from_base']:.4f} nats/token; general instructions correct {f['general_before']:.2f} -> "
              f"{f['general_after']:.2f}"]
    lines += check_lines(f["checks"])
    lines.append(f"safety (gate report): the candidate fell for {len(s['worked_candidate'])} of {s['probes']} attack "
                 f"probes, the active version for {s['worked_active']}")
    lines += check_lines(s["checks"])
    lines += [f"  fell for ({p['family']}): {p['question']} -> {textwrap.shorten(p['answer'], 90, placeholder='...')}"
              for p in s["worked_candidate"]]
    lines += [f"gate report: {g['report']}", "",
              "wall time: " + ", ".join(f"{k.split(':')[0]} {minutes(v)}" for k, v in result["wall_s"].items())]
    return "\n".join(lines)
