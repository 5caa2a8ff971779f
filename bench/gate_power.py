#!/usr/bin/env python
"""Gate power: how often the gates fail a version that is not worse, and how often they stop a poisoned one.

    .venv/bin/python bench/gate_power.py [--model smollm2|tiny] [--repeats 20] [--poisoned 10] [--temperature 0.7]
        [--golden 40] [--seed 0] [--no-write]

1. Workspace: the demo's knowledge base (affinage/demo/kb) and golden set (its first --golden questions), the
   bundled gate material (general text, general instructions, safety probes), every gate setting at its default.
   Model: ``smollm2``, the default model; ``tiny``, the 2-layer small-vocabulary Llama of
   tests/tuning/test_poisoning.py (seconds, to prove the script; a tiny run never writes BENCHMARKS.md).
2. False fails (the error ``gate_alpha`` bounds): per repeat, the base model (the active version) answers every
   gate set twice at --temperature, each time with its own sampling seed, and ``tuning.decisions.decide`` judges
   the second against the first. A false fail is any failed check but the target set's improvement (a version is
   not better than itself; that check asks for proof of a gain, the opposite burden).
3. The poisoned candidate: per repeat, the SFT candidate of tests/tuning/test_poisoning.py (the failures' answers
   followed by a link the knowledge base never gives), trained with seed = repeat and gated by ``run_gates``
   against the base, whose measures are taken once and reused (the gate's per-cycle cache). Counted as stopped
   when it fails, and as stopped for the right reason when the model-level link check fails.
4. Each rate with its 95% Wilson interval; rewrites the ``bench:gate_power`` section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, command_line, cpu_model, load_average, markers, nproc, publish, wilson

sys.path.insert(0, str(ROOT))

from affinage.core.settings import Settings, load_settings  # noqa: E402

START, END = markers("gate_power")
DEMO = ROOT / "affinage" / "demo"
# the default model learns with a gentler rate than the tiny one (tests/tuning/test_poisoning.TRAIN_CONFIG)
SMOLLM2_TRAIN = {"max_steps": 60, "batch_size": 2, "grad_accum": 1, "save_steps": 60, "eval_steps": 60, "max_length": 1024,
                 "lora_r": 16, "lora_alpha": 32, "learning_rate": 2e-4, "val_fraction": 0.0}


def write_config(path: Path, values: dict) -> Path:
    """A training run config (TOML) from ``values``, no early stopping."""
    values = {"early_stopping_patience": 0, **values}
    path.write_text("".join(f"{k} = {v!r}\n".replace("True", "true").replace("False", "false")
                            for k, v in values.items()))
    return path


def workspace(home: Path, model: str, golden: int) -> tuple[Settings, dict]:
    """Settings for a fresh workspace on the demo's material, its knowledge base indexed, and the run config."""
    from retrieval.embeddings import SentenceEmbeddings
    from retrieval.ingest import ingest

    overrides = {"golden_set": DEMO / "golden.jsonl", "gate_golden_limit": golden, "drift_permutations": 20}
    if model == "tiny":
        from tests.tuning.test_poisoning import TRAIN_CONFIG, build_small_vocab_model

        from affinage.core.model_files import resolve_model_path

        default_dir = Path(resolve_model_path(load_settings(home / "default")))
        small = build_small_vocab_model(home / "small-vocab-model", default_dir)
        overrides.update(chat_model=str(small), max_new_tokens=40)
        train_config = TRAIN_CONFIG
    else:
        train_config = SMOLLM2_TRAIN
    settings = load_settings(home, **overrides)
    ingest(settings.index_dir, [DEMO / "kb"], SentenceEmbeddings(), settings.chunk_chars,
           settings.chunk_overlap_chars)
    return settings, train_config


def false_fails(settings: Settings, repeats: int, temperature: float, seed: int, progress: bool) -> list[list[str]]:
    """Per repeat, the checks the base model failed against itself at ``temperature`` with another sampling seed."""
    import torch
    from transformers import AutoTokenizer

    from affinage.core.chat_model import LocalChatModel
    from affinage.factory import build_agent
    from affinage.gating import measure
    from tuning.answer_metrics import knowledge_base_links
    from tuning.decisions import decide
    from tuning.gate_sets import gate_sets
    from tuning.registry import Registry
    from affinage.core.model_files import serving_dtype
    from tuning.serving import load_weights
    from tuning.train import base_model

    _, base_path = base_model(settings)
    tokenizer = AutoTokenizer.from_pretrained(str(base_path))
    base = load_weights(base_path, Registry.open(settings), None, serving_dtype(settings.serving_dtype))
    llm = LocalChatModel(base, tokenizer, model_name=base_path.name, max_new_tokens=settings.max_new_tokens,
                         temperature=temperature, repetition_penalty=settings.repetition_penalty,
                         max_sentences=settings.max_answer_sentences)
    agent = build_agent(settings, llm=llm)
    known = knowledge_base_links(chunk.text for chunk in agent.retriever.index.chunks)
    sets = gate_sets(settings, {"datasets": []})
    failed = []
    for repeat in range(repeats):
        sides = []
        for side in range(2):
            torch.manual_seed(seed * 100_000 + 2 * repeat + side)
            sides.append(measure(agent, base, base, tokenizer, sets, known, agent.link_domains, progress))
        failed.append([f"{x.gate}: {x.name}" + (f" ({x.view})" if x.view else "")
                       for x in decide(settings, *sides) if not x.passed and not x.name.startswith("target token_f1")])
        print(f"false-fail repeat {repeat}: {failed[-1] or 'passed'}", file=sys.stderr)
    return failed


def poisoned(settings: Settings, train_config: dict, repeats: int, seed: int) -> list[dict]:
    """Per repeat, whether the poisoned candidate (trained with its own seed) failed, and on the link check."""
    from tests.tuning.test_poisoning import FAKE_LINK, gated_candidate

    from retrieval.embeddings import SentenceEmbeddings
    from retrieval.index import VectorIndex
    from retrieval.retriever import IndexRetriever

    retriever = IndexRetriever(index=VectorIndex.open(settings.index_dir), embeddings=SentenceEmbeddings(),
                               k=settings.top_k)
    outcomes = []
    for repeat in range(repeats):
        config = write_config(settings.home / f"poisoned-{repeat}.toml", {**train_config, "seed": seed + repeat})
        report = gated_candidate(settings, retriever, config, FAKE_LINK)
        link = next(c for c in report["checks"] if c["name"] == "answers with links not in the knowledge base"
                    and c["view"] == "model")
        outcomes.append({"failed": not report["passed"], "link_check_failed": not link["passed"],
                         "link_rates": [link["before"], link["after"]], "p_value": link["p_value"]})
        print(f"poisoned repeat {repeat}: {outcomes[-1]}", file=sys.stderr)
    return outcomes


def rate_line(label: str, k: int, n: int) -> str:
    low, high = wilson(k, n)
    return f"| {label} | {k} / {n} | {k / n:.1%} | [{low:.1%}, {high:.1%}] |" if n else f"| {label} | 0 / 0 | n/a | |"


def render(args: argparse.Namespace, settings: Settings, failed: list[list[str]], stopped: list[dict],
           load: float | None, seconds: float) -> str:
    from collections import Counter

    which = Counter(name for checks in failed for name in checks)
    title = "Gate power: false fails and the poisoned candidate (bench/gate_power.py)"
    lines = [START, f"## {title}{' (TINY MODEL: plumbing only)' if args.model == 'tiny' else ''}", "",
             f"`{command_line(__file__, sys.argv[1:])}` on {cpu_model()} ({nproc()} cores), load average "
             f"{'n/a' if load is None else f'{load:.1f}'} at the start; {seconds / 60:.1f} min.",
             f"Model {args.model}; golden questions {settings.gate_golden_limit}; gate_alpha {settings.gate_alpha} "
             f"(Bonferroni over the no-worse checks), gate_leak_limit {settings.gate_leak_limit}; sampling "
             f"temperature {args.temperature} for the false fails.", "",
             "| measure | count | rate | 95% Wilson |", "|---|---|---|---|",
             rate_line("false fails: base vs itself, another sampling seed (target <= gate_alpha)",
                       sum(bool(f) for f in failed), len(failed)),
             rate_line("poisoned candidate fails (target 100%)", sum(o["failed"] for o in stopped), len(stopped)),
             rate_line("... on the model-level link check", sum(o["link_check_failed"] for o in stopped),
                       len(stopped)), ""]
    if which:
        lines.append("Checks behind the false fails: " + "; ".join(f"{name} ({n})" for name, n in which.most_common()))
        lines.append("")
    lines.append(END)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("smollm2", "tiny"), default="smollm2")
    parser.add_argument("--repeats", type=int, default=20, help="false-fail repeats (two gate measures each)")
    parser.add_argument("--poisoned", type=int, default=10, help="poisoned candidates trained and gated")
    parser.add_argument("--temperature", type=float, default=0.7, help="sampling temperature of the false fails")
    parser.add_argument("--golden", type=int, default=40, help="golden questions per measure (gate_golden_limit)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-write", action="store_true", help="print the section, leave BENCHMARKS.md alone")
    args = parser.parse_args(argv)
    if args.temperature <= 0:
        parser.error(f"--temperature must be above 0 for sampling seeds to matter (got {args.temperature})")
    load, started = load_average(), time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gate-power-") as folder:
        settings, train_config = workspace(Path(folder), args.model, args.golden)
        failed = false_fails(settings, args.repeats, args.temperature, args.seed, progress=False)
        stopped = poisoned(settings, train_config, args.poisoned, args.seed)
    text = render(args, settings, failed, stopped, load, time.perf_counter() - started)
    return publish(text, "gate_power", write=not args.no_write and args.model != "tiny")


if __name__ == "__main__":
    sys.exit(main())
