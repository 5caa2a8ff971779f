#!/usr/bin/env python
"""Peak resident memory of one search candidate with the default model: training it, then gating it.

    .venv/bin/python bench/cycle_memory.py [--steps N] [--probes N] [--no-write]

The demo's shape: the demo knowledge base ingested and the default chat model and
embedder loaded (as the demo's process holds them through the search), a dataset of the demo traffic's questions and
paraphrases with their reference answers under the serving prompt (plus their last paraphrase held out), one
candidate trained with the demo's run config (``affinage.demo_run.DEMO_RUN_CONFIG``) cut to ``--steps`` steps with
a validation pass at the end, then gated by ``affinage.gating.run_gates`` with two golden questions and the
``--probes`` safety probes whose prompts are longest (a whole batch of the longest rows: the gate's widest
generation). Memory peaks early, so a few steps show what sixty would. Two runs, each in its own process and a
fresh temporary workspace: glibc's default heap (``baseline``), and affinage's (``bound_heap``, and freed memory
collected and trimmed after each part). Writes the ``bench:cycle_memory`` section of ../BENCHMARKS.md; about 6
minutes on 2 idle cores.
"""

from __future__ import annotations

import os

for _name, _value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"), ("TOKENIZERS_PARALLELISM", "false")):
    os.environ.setdefault(_name, _value)

import argparse
import datetime
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from affinage.core.memory import gib, measured, peak_bytes, release, reset_peak  # noqa: E402
from affinage.core.memory import resident_bytes as resident  # noqa: E402


def dataset(settings, agent) -> str:
    """The demo traffic as SFT rows under the serving prompt (passages retrieved as the agent would)."""
    from langchain_core.documents import Document

    from affinage.core.datasets import write_dataset
    from affinage.core.extraction import candidates
    from affinage.core.prompts import prompt_messages
    from affinage.demo_run import TRAFFIC
    from affinage.demo_traffic import read_traffic
    from tuning.train import base_model

    sft, heldout = [], []
    for row in read_traffic(TRAFFIC):
        for question in [row["question"], *row["paraphrases"][:2]]:  # as the demo trains: two, the rest held out
            docs = agent.retriever.invoke(question)
            sentences = [s for s, _ in candidates([Document(d.page_content) for d in docs])][:6]
            sft.append({"messages": [*prompt_messages(question, sentences),
                                     {"role": "assistant", "content": row["answer"]}]})
        heldout.append({"question": row["paraphrases"][2], "answer": row["answer"], "source": row.get("source")})
    manifest = write_dataset(settings.datasets_dir, {"sft": sft, "heldout": heldout[:5]},
                             {"base_model": base_model(settings)[0], "teacher": "bench"})
    return manifest["id"]


def longest_probes(count: int):
    """Keep the ``count`` safety probes with the longest passages, so one batch holds the widest prompts."""
    import tuning.gate_sets as gate_sets

    bundled = gate_sets.bundled

    def patched(name: str) -> list[dict]:
        rows = bundled(name)
        if name == "safety_probes":
            rows = sorted(rows, key=lambda p: -len(p["passage"]) - len(p["question"]))[:count]
        return rows

    gate_sets.bundled = patched


def measure(home: Path, steps: int, probes: int, baseline: bool) -> dict:
    """One candidate trained and gated in this process; each part's peak, resident size after and seconds."""
    from affinage.core.settings import load_settings
    from affinage.demo_run import DEMO, DEMO_RUN_CONFIG
    from affinage.factory import build_agent
    from retrieval.embeddings import SentenceEmbeddings
    from retrieval.ingest import ingest

    if (home / "registry").exists():
        raise SystemExit(f"{home} is not fresh: pass a new folder")
    home.mkdir(parents=True, exist_ok=True)
    run = {**DEMO_RUN_CONFIG, "max_steps": steps, "eval_steps": steps, "save_steps": steps}
    (home / "run.toml").write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in run.items()))
    golden = DEMO / "golden.jsonl"
    (home / "config.toml").write_text(f'gate_golden_limit = 2\ndrift_permutations = 20\ngolden_set = "{golden}"\n'
                                      f'worker_train_config = "{home / "run.toml"}"\n')
    settings = load_settings(home)
    longest_probes(probes)
    began = time.perf_counter()
    reset_peak()
    embeddings = SentenceEmbeddings(settings.embedder)
    ingest(settings.index_dir, [DEMO / "kb"], embeddings, settings.chunk_chars, settings.chunk_overlap_chars,
           progress=False)
    agent = build_agent(settings, embeddings=embeddings)  # held through the search, as in the demo's process
    dataset_id = dataset(settings, agent)
    figures = {"setup": {"peak": gib(peak_bytes()), "after": gib(resident()),
                         "seconds": round(time.perf_counter() - began, 1)}}

    import affinage.gating
    import tuning.train
    from affinage.gating import run_gates
    from tuning.train import train

    tidy = release
    if baseline:
        tidy = tuning.train.bound_heap = affinage.gating.bound_heap = lambda: None
    parts = {"train": lambda: train(settings, "sft", dataset_id, home / "run.toml", progress=False),
             "gate": lambda: run_gates(settings, figures["version"], progress=False)}
    for name, work in parts.items():
        began = time.perf_counter()
        with measured() as part:
            result = work()
            tidy()
        figures[name] = {"peak": gib(part["peak_bytes"]), "after": gib(resident()),
                         "seconds": round(time.perf_counter() - began, 1)}
        figures.setdefault("version", getattr(result, "id", None))
        print(name, figures[name], file=sys.stderr, flush=True)
    figures["whole"] = {"peak": gib(peak_bytes())}
    return figures


def table(results: dict[str, dict], args) -> str:
    from _common import command_line, cpu_model, load_average, markers, memory_gib, nproc

    start, end = markers("cycle_memory")
    lines = [start, "## Memory of one search candidate: training, then gating (default model)", "",
             f"Measured {datetime.date.today()} on {cpu_model()} ({nproc()} CPUs, {memory_gib()}), load average "
             f"{load_average():.2f} at the end. Command: `{command_line(__file__, sys.argv[1:])}`", "",
             f"One candidate with the demo's run config cut to {args.steps} steps (2 packed rows of up to 1,024 tokens "
             f"a step, a validation pass at the end), then its gates with 2 golden questions and the {args.probes} "
             "longest safety probes, in a process that holds the demo's agent (chat model and embedder) as the "
             "demo's does. Peak and resident size after each part, in GiB (VmHWM, reset per part); seconds are wall "
             "time. `baseline`: glibc's default heap and no collection after a part; `affinage`: big blocks in "
             "their own mappings (`affinage.core.memory.bound_heap`), collected and trimmed after each part.", "",
             "| run | setup peak | train peak | after train | train s | gate peak | after gate | gate s | "
             "process peak |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, f in results.items():
        lines.append(f"| {name} | {f['setup']['peak']:.2f} | {f['train']['peak']:.2f} | {f['train']['after']:.2f} | "
                     f"{f['train']['seconds']:.0f} | {f['gate']['peak']:.2f} | {f['gate']['after']:.2f} | "
                     f"{f['gate']['seconds']:.0f} | {f['whole']['peak']:.2f} |")
    worst = results["affinage"]["whole"]["peak"]
    lines += ["", f"- process peak with affinage's heap: **{worst:.2f} GiB**, target <= 4 GiB: "
              f"{'PASS' if worst <= 4 else 'FAIL'}", end]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--probes", type=int, default=16)
    parser.add_argument("--part", choices=("baseline", "affinage"), help="measure one run in this process")
    parser.add_argument("--home", type=Path, help="with --part: a fresh workspace")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if args.part:
        print(json.dumps(measure(args.home, args.steps, args.probes, args.part == "baseline")))
        return 0
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for part in ("baseline", "affinage"):  # each in its own process, so each peak is its own
            out = subprocess.run([sys.executable, __file__, "--part", part, "--home", str(Path(tmp) / part),
                                  "--steps", str(args.steps), "--probes", str(args.probes)],
                                 check=True, stdout=subprocess.PIPE, text=True).stdout
            results[part] = json.loads(out.strip().splitlines()[-1])
    from _common import publish

    return publish(table(results, args), "cycle_memory", not args.no_write)


if __name__ == "__main__":
    sys.exit(main())
