#!/usr/bin/env python
"""Peak resident memory of one search candidate with the default model: training it, then gating it.

    .venv/bin/python bench/cycle_memory.py HOME [--steps N] [--probes N] [--baseline]

The demo's shape in a fresh workspace ``HOME``: the demo knowledge base ingested and the default chat model and
embedder loaded (as the demo's process holds them through the search), a dataset of the demo traffic's questions and
paraphrases with their reference answers under the serving prompt (plus their last paraphrase held out), one
candidate trained with the demo's run config (``affinage.demo_run.DEMO_RUN_CONFIG``) cut to ``--steps`` steps with
a validation pass at the end, then gated by ``affinage.gating.run_gates`` with two golden questions and the
``--probes`` safety probes whose prompts are longest (a whole batch of the longest rows: the gate's widest
generation). Memory peaks early, so a few steps show what sixty would. Prints the peak of each part and the resident
size after it; about 10 minutes on 2 cores.
"""

from __future__ import annotations

import os

for _name, _value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"), ("TOKENIZERS_PARALLELISM", "false")):
    os.environ.setdefault(_name, _value)

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

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
        for question in [row["question"], *row["paraphrases"][:-1]]:
            docs = agent.retriever.invoke(question)
            sentences = [s for s, _ in candidates([Document(d.page_content) for d in docs])][:6]
            sft.append({"messages": [*prompt_messages(question, sentences),
                                     {"role": "assistant", "content": row["answer"]}]})
        heldout.append({"question": row["paraphrases"][-1], "answer": row["answer"], "source": row.get("source")})
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("home", type=Path)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--probes", type=int, default=16)
    parser.add_argument("--baseline", action="store_true",
                        help="glibc's default heap (no bound_heap) and no collecting and trimming after each part")
    args = parser.parse_args()

    from affinage.core.settings import load_settings
    from affinage.demo_run import DEMO, DEMO_RUN_CONFIG
    from affinage.factory import build_agent
    from retrieval.embeddings import SentenceEmbeddings
    from retrieval.ingest import ingest

    home = args.home
    if (home / "registry").exists():
        raise SystemExit(f"{home} is not fresh: pass a new folder")
    home.mkdir(parents=True, exist_ok=True)
    run = {**DEMO_RUN_CONFIG, "max_steps": args.steps, "eval_steps": args.steps, "save_steps": args.steps}
    (home / "run.toml").write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in run.items()))
    golden = DEMO / "golden.jsonl"
    (home / "config.toml").write_text(f'gate_golden_limit = 2\ndrift_permutations = 20\ngolden_set = "{golden}"\n'
                                      f'worker_train_config = "{home / "run.toml"}"\n')
    settings = load_settings(home)
    longest_probes(args.probes)
    figures: dict[str, float] = {}
    began = time.perf_counter()
    reset_peak()
    embeddings = SentenceEmbeddings(settings.embedder)
    ingest(settings.index_dir, [DEMO / "kb"], embeddings, settings.chunk_chars, settings.chunk_overlap_chars,
           progress=False)
    agent = build_agent(settings, embeddings=embeddings)  # held through the search, as in the demo's process
    dataset_id = dataset(settings, agent)
    figures["setup peak"], figures["setup resident"] = gib(peak_bytes()), gib(resident())
    print(f"setup: peak {figures['setup peak']} GiB, resident {figures['setup resident']} GiB "
          f"({time.perf_counter() - began:.0f} s)", flush=True)

    import affinage.gating
    import tuning.train
    from affinage.gating import run_gates
    from tuning.train import train

    tidy = release
    if args.baseline:
        tidy = tuning.train.bound_heap = affinage.gating.bound_heap = lambda: None

    with measured() as part:
        version = train(settings, "sft", dataset_id, home / "run.toml", progress=False)
        tidy()
    figures["train peak"], figures["train resident"] = gib(part["peak_bytes"]), gib(resident())
    print(f"train ({args.steps} steps): peak {figures['train peak']} GiB, resident after "
          f"{figures['train resident']} GiB ({time.perf_counter() - began:.0f} s)", flush=True)
    with measured() as part:
        report = run_gates(settings, version.id, progress=False)
        tidy()
    figures["gate peak"], figures["gate resident"] = gib(part["peak_bytes"]), gib(resident())
    print(f"gate ({args.probes} probes, passed={report['passed']}): peak {figures['gate peak']} GiB, resident after "
          f"{figures['gate resident']} GiB ({time.perf_counter() - began:.0f} s)", flush=True)
    figures["whole peak"] = gib(peak_bytes())
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
