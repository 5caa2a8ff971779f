#!/usr/bin/env python
"""LoRA training throughput: affinage's SFT and DPO against a plain Hugging Face Trainer + PEFT script.

    .venv/bin/python bench/train_throughput.py [--steps N] [--batch-size N] [--no-write]

The same job everywhere: the default model (SmolLM2-135M-Instruct), LoRA r=16 / alpha=32 on all linear layers,
sequence length 512, batch size 4, the same rows: support conversations built from the demo golden set with the
serving prompt (system prompt + 1-3 delimited knowledge-base passages + question -> reference answer), so prompt
lengths vary the way real ones do.

Variants, each in its own process (so peak RSS is its own), each timed by its trainer's ``train_runtime``
(model loading and tokenisation excluded, reported separately) and counting real, non-padding tokens:

- ``plain``: what a user writes from the PEFT/Transformers docs with default settings: ``apply_chat_template``
  on the whole conversation, ``DataCollatorForLanguageModeling`` (pads each batch), ``Trainer`` defaults.
- ``affinage-padded``: ``affinage train --method sft`` with ``packing = false``.
- ``affinage-packed``: ``affinage train --method sft`` with its default padding-free packing.
- ``affinage-dpo``: ``affinage train --method dpo`` on pairs whose chosen answer is the SFT answer.

Targets (computed, PASS/FAIL in the table): affinage padded >= 1.0x plain tokens/s, packed >= 1.3x, and a DPO
step per pair <= 2.5x the cost of an unpacked SFT step on the same tokens (seconds per pair over seconds per
SFT example, the reference log-probs precomputed outside the timed loop and reported on their own).
Writes the ``bench:train_throughput`` section of ../BENCHMARKS.md. About 10-15 minutes on 2 idle CPU cores.
"""

from __future__ import annotations

import os

for _name, _value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"), ("TOKENIZERS_PARALLELISM", "false")):
    os.environ.setdefault(_name, _value)

import argparse
import datetime as dt
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import command_line, cpu_model, load_average, markers, memory_gib, nproc, publish  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("plain", "affinage-padded", "affinage-packed", "affinage-dpo")
LORA = {"r": 16, "alpha": 32}
MAX_LENGTH = 512
START, END = markers("train_throughput")


def log(message: str) -> None:
    print(f"[train_throughput] {message}", file=sys.stderr, flush=True)


# -- data ------------------------------------------------------------------------------------------------------------
def conversations(limit: int | None = None) -> list[list[dict]]:
    """Golden questions with the serving prompt over every sentence of their own passage plus 0-2 others, and the
    reference answer."""
    from langchain_core.documents import Document

    from affinage.core.extraction import candidates
    from affinage.core.prompts import prompt_messages
    from retrieval.chunking import chunk_document
    from retrieval.loaders import load_document

    kb = ROOT / "affinage" / "demo" / "kb"
    chunks = [c for path in sorted(kb.rglob("*.md"))
              for c in chunk_document(str(path.relative_to(kb)), load_document(path), 700, 120)]
    by_source = {}
    for chunk in chunks:
        by_source.setdefault(chunk.source, chunk)
    rows = []
    golden = [json.loads(line) for line in (ROOT / "affinage" / "demo" / "golden.jsonl").read_text().splitlines() if line]
    for i, item in enumerate(golden):
        own = by_source.get(item.get("source", ""))
        passages = ([own] if own else []) + [chunks[(i * 7 + j * 13) % len(chunks)] for j in range(i % 3)]
        docs = [Document(c.text, metadata={"source": c.source}) for c in passages]
        rows.append([*prompt_messages(item["question"], [s for s, _ in candidates(docs)]),
                     {"role": "assistant", "content": item["answer"]}])
    return rows[:limit]


def rows_for(steps: int, batch: int) -> int:
    """Enough conversations for every step without repeats in the padded variants, and few enough that DPO's
    reference precompute stays short."""
    return steps * batch


# -- workers (one process each) --------------------------------------------------------------------------------------
def plain(home: Path, steps: int, batch: int) -> dict:
    """The baseline, as the PEFT and Transformers docs write it."""
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import (AutoModelForCausalLM, AutoTokenizer, DataCollatorForLanguageModeling, Trainer,
                              TrainingArguments)

    from affinage.core.settings import load_settings
    from tuning.train import base_model

    started = time.perf_counter()
    _, path = base_model(load_settings(home))
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    model = get_peft_model(model, LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], target_modules="all-linear",
                                             lora_dropout=0.05, task_type="CAUSAL_LM"))
    dataset = Dataset.from_list([{"messages": m} for m in conversations(rows_for(steps, batch))]).map(
        lambda row: tokenizer.apply_chat_template(row["messages"], tokenize=True, truncation=True,
                                                  max_length=MAX_LENGTH, return_dict=True),
        remove_columns=["messages"])
    args = TrainingArguments(output_dir=str(home / "plain"), per_device_train_batch_size=batch, max_steps=steps,
                             report_to=[], save_strategy="no", include_num_input_tokens_seen="non_padding",
                             disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=dataset,
                      data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False))
    setup = time.perf_counter() - started
    output = trainer.train()
    return {"setup_s": setup, "runtime_s": output.metrics["train_runtime"],
            "tokens": int(trainer.state.num_input_tokens_seen), "sequences": steps * batch}


def affinage(home: Path, steps: int, batch: int, method: str, packing: bool | None) -> dict:
    """The same job through ``tuning.train.train``, the code behind ``affinage train``."""
    from affinage.core.settings import load_settings
    from affinage.core.model_files import EMBEDDED_NAME
    from affinage.core.datasets import write_dataset
    from tuning.train import train

    settings = load_settings(home)
    rows = conversations(rows_for(steps, batch))
    sft = [{"messages": m} for m in rows]
    pairs = [{"prompt": m[:2], "chosen": m[2:], "rejected": rows[(i + 1) % len(rows)][2:]} for i, m in enumerate(rows)]
    write_dataset(settings.datasets_dir, {"sft": sft, "preference": pairs}, {"base_model": EMBEDDED_NAME})
    config = home / f"{method}.toml"
    lines = [f"max_steps = {steps}", f"batch_size = {batch}", "grad_accum = 1", f"max_length = {MAX_LENGTH}",
             f"lora_r = {LORA['r']}", f"lora_alpha = {LORA['alpha']}", "val_fraction = 0.0",
             "early_stopping_patience = 0",
             f"save_steps = {steps}", f"eval_steps = {steps}"]
    if packing is not None:
        lines.append(f"packing = {'true' if packing else 'false'}")
    config.write_text("\n".join(lines) + "\n")
    started = time.perf_counter()
    version = train(settings, method, config_path=config, progress=False)
    wall = time.perf_counter() - started
    metrics = version.manifest["metrics"]
    return {"setup_s": wall - metrics["runtime_s"], "runtime_s": metrics["runtime_s"], "tokens": metrics["tokens"],
            "sequences": steps * batch}


def worker(variant: str, home: Path, steps: int, batch: int) -> dict:
    home.mkdir(parents=True, exist_ok=True)
    if variant == "plain":
        return plain(home, steps, batch)
    method, packing = {"affinage-padded": ("sft", False), "affinage-packed": ("sft", True),
                       "affinage-dpo": ("dpo", None)}[variant]
    return affinage(home, steps, batch, method, packing)


def run_variant(variant: str, root: Path, steps: int, batch: int) -> dict:
    """One worker process; its peak RSS comes from wait4, so it is that process's own."""
    home = root / variant
    command = [sys.executable, __file__, "--worker", variant, "--home", str(home), "--steps", str(steps),
               "--batch-size", str(batch)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                               env={**os.environ, "PYTHONPATH": str(ROOT)})
    out = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    if status != 0:
        raise SystemExit(f"train_throughput: the {variant} worker failed (status {status}); rerun it alone:\n"
                         f"  {' '.join(command)}")
    result = json.loads(out.strip().splitlines()[-1])
    result["peak_rss_mib"] = usage.ru_maxrss / 1024
    result["tokens_per_s"] = result["tokens"] / result["runtime_s"]
    return result


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def section(results: dict, args, load_start: float | None, load_end: float | None, wall_s: float) -> str:
    plain_tps = results["plain"]["tokens_per_s"]
    padded, packed = results["affinage-padded"]["tokens_per_s"] / plain_tps, results["affinage-packed"]["tokens_per_s"] / plain_tps
    sft_per_example = results["affinage-padded"]["runtime_s"] / results["affinage-padded"]["sequences"]
    dpo_per_pair = results["affinage-dpo"]["runtime_s"] / results["affinage-dpo"]["sequences"]
    dpo_ratio = dpo_per_pair / sft_per_example
    names = {"plain": "plain Trainer + PEFT (defaults, padded batches)", "affinage-padded": "affinage sft, packing off",
             "affinage-packed": "affinage sft, padding-free packing", "affinage-dpo": "affinage dpo (pairs)"}
    rows = "\n".join(
        f"| {names[v]} | {r['tokens']:,} | {r['runtime_s']:.1f} | {r['tokens_per_s']:.0f} | "
        f"{r['tokens_per_s'] / plain_tps:.2f}x | {r['setup_s']:.1f} | {r['peak_rss_mib']:.0f} |"
        for v, r in results.items())
    load = "n/a" if load_start is None else f"{load_start:.2f} at start, {load_end:.2f} at end"
    return f"""{START}
## LoRA training throughput: affinage vs a plain Trainer + PEFT script

Measured {dt.date.today().isoformat()} on {cpu_model()} ({nproc()} CPUs, {memory_gib()}), load average {load};
whole run {wall_s / 60:.1f} min. Command: `{command_line(__file__, [a for a in sys.argv[1:] if a != '--no-write'])}`

Default model SmolLM2-135M-Instruct, LoRA r={LORA['r']} alpha={LORA['alpha']} on all linear layers, sequence length
{MAX_LENGTH}, batch size {args.batch_size}, {args.steps} optimiser steps per variant, the same
{rows_for(args.steps, args.batch_size)} support conversations from the demo golden set (serving prompt with 1-3 passages;
packing fits more of them per step and cycles). Tokens are real (non-padding) tokens trained on; time is
the trainer's `train_runtime`; setup is loading, tokenisation and (DPO) the reference log-prob precompute; peak RSS
is the worker process's.

| variant | tokens | train s | tokens/s | vs plain | setup s | peak RSS MiB |
|---|---:|---:|---:|---:|---:|---:|
{rows}

- affinage (packing off) vs plain: **{padded:.2f}x** tokens/s, target >= 1.0x: {verdict(padded >= 1.0)}
- affinage (padding-free packing) vs plain: **{packed:.2f}x**, target >= 1.3x: {verdict(packed >= 1.3)}
- DPO step per pair vs an unpacked SFT step per example on the same conversations: **{dpo_ratio:.2f}x**
  ({dpo_per_pair:.2f} s vs {sft_per_example:.2f} s), target <= 2.5x: {verdict(dpo_ratio <= 2.5)}
{END}"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=12, help="optimiser steps per variant (default 12)")
    parser.add_argument("--batch-size", type=int, default=4, help="sequences (or packed rows) per step (default 4)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset (default: all)")
    parser.add_argument("--no-write", action="store_true", help="print the section, leave BENCHMARKS.md alone")
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--home", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.batch_size < 1:
        parser.error("--steps and --batch-size must be at least 1")
    if args.worker:
        print(json.dumps(worker(args.worker, Path(args.home), args.steps, args.batch_size)))
        return 0

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants: {', '.join(sorted(unknown))}")
    load_start = load_average()
    if load_start is not None and load_start > 0.5:
        log(f"warning: load average is {load_start:.2f}; other work on this machine slows every variant")
    started = time.perf_counter()
    results = {}
    with tempfile.TemporaryDirectory(prefix="affinage-train-bench-") as root:
        # one conversion of the bundled GGUF, shared by every worker through the models folder
        from affinage.core.settings import load_settings
        from tuning.train import base_model

        shared = Path(root) / "models"
        base_model(load_settings(Path(root) / "prepare"))
        (Path(root) / "prepare" / "models").rename(shared)
        for variant in variants:
            (Path(root) / variant).mkdir()
            (Path(root) / variant / "models").symlink_to(shared)
            log(f"{variant}: training {args.steps} steps ...")
            results[variant] = run_variant(variant, Path(root), args.steps, args.batch_size)
            r = results[variant]
            log(f"{variant}: {r['tokens']} tokens in {r['runtime_s']:.1f} s = {r['tokens_per_s']:.0f} tokens/s, "
                f"setup {r['setup_s']:.1f} s, peak RSS {r['peak_rss_mib']:.0f} MiB")
    if set(results) != set(VARIANTS):
        log("not every variant ran: nothing written")
        return 0
    text = section(results, args, load_start, load_average(), time.perf_counter() - started)
    return publish(text, "train_throughput", write=not args.no_write)


if __name__ == "__main__":
    sys.exit(main())
