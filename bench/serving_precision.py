#!/usr/bin/env python
"""Does serving in bfloat16 cost answers? The demo golden set answered by the default model in float32 and in
bfloat16 (``serving_dtype``), each through ``affinage eval`` in its own process, on one workspace.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/serving_precision.py [--home DIR] [--no-write]

Per precision: key-fact recall with its 95% Wilson interval, token F1, mean and p95 latency, time to first token,
wall time and the process's peak resident memory. Between the two: how many answers are identical, and the exact
McNemar test over the questions whose key fact one precision found and the other did not (two-sided; the
difference is the discordant pairs, not the two rates). Rewrites the ``bench:serving_precision`` section of
BENCHMARKS.md.
"""

from __future__ import annotations

import os

for _name, _value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"), ("TOKENIZERS_PARALLELISM", "false")):
    os.environ.setdefault(_name, _value)

import argparse
import datetime as dt
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, command_line, cpu_model, load_average, markers, memory_gib, nproc, publish, wilson

GOLDEN = ROOT / "affinage" / "demo" / "golden.jsonl"
PRECISIONS = ("float32", "bfloat16")


def affinage(home: Path, *args: str, env: dict | None = None) -> tuple[str, int]:
    """Run one `affinage` command; its stdout and the process's peak resident bytes, or exit with its output."""
    command = [sys.executable, "-m", "affinage.cli", "--home", str(home), *args]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen(command, stdout=out, stderr=err, text=True, cwd=ROOT,
                                   env={**os.environ, **(env or {})})
        _, status, usage = os.wait4(process.pid, 0)  # this child's own peak, not the largest child's so far
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        if process.returncode != 0:
            raise SystemExit(f"serving_precision: {' '.join(args[:2])} failed ({process.returncode}):\n"
                             f"{err.read()[-3000:]}")
        return out.read(), usage.ru_maxrss * 1024


def mcnemar_p(only_a: int, only_b: int) -> float:
    """Exact two-sided McNemar p-value: the discordant pairs as a fair coin's tosses."""
    n, k = only_a + only_b, min(only_a, only_b)
    if n == 0:
        return 1.0
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)


def evaluate(home: Path, precision: str) -> dict:
    from affinage.core.metrics import contains_fact

    out_file = home / f"eval-{precision}.jsonl"
    started = time.monotonic()
    printed, _ = affinage(home, "eval", str(GOLDEN), "--out", str(out_file), "--json",
                          env={"AFFINAGE_SERVING_DTYPE": precision})
    wall = time.monotonic() - started
    figures = json.loads(printed.strip().splitlines()[-1])
    rows = [json.loads(line) for line in out_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    facts = [contains_fact(r["answer"], r["key_fact"]) if r.get("key_fact") else None for r in rows]
    return {"figures": figures, "rows": rows, "facts": facts, "wall_s": wall}


def peak_of(home: Path, precision: str) -> int:
    """Peak resident memory of a process that loads the model in ``precision`` and answers one question."""
    _, peak = affinage(home, "ask", "How long is a password reset link valid?",
                       env={"AFFINAGE_SERVING_DTYPE": precision})
    return peak


def section(args: argparse.Namespace, results: dict, peaks: dict, load: float | None) -> str:
    start, end = markers("serving_precision")
    a, b = (results[p] for p in PRECISIONS)
    pairs = [(x, y) for x, y in zip(a["facts"], b["facts"]) if x is not None and y is not None]
    only_f32, only_bf16 = sum(x and not y for x, y in pairs), sum(y and not x for x, y in pairs)
    identical = sum(x["answer"] == y["answer"] for x, y in zip(a["rows"], b["rows"]))
    lines = [start, "## Serving precision: float32 against bfloat16 (bench/serving_precision.py)", "",
             f"Run {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC on {cpu_model()}, {nproc()} cores, "
             f"{memory_gib()}; 1-minute load {load if load is None else f'{load:.2f}'} at the start. Command: "
             f"`{command_line(__file__, sys.argv[1:])}`.", "",
             f"The demo golden set ({len(a['rows'])} questions, {len(pairs)} with a key fact), default model, one "
             "question at a time through `affinage eval`, each precision in its own process.", "",
             "| precision | key-fact recall (95% CI) | token F1 | mean latency | p95 latency | p95 TTFT | wall | "
             "peak memory, one `affinage ask` |",
             "|---|---|---|---|---|---|---|---|"]
    for side, precision in enumerate(PRECISIONS):
        r, found = results[precision], sum(pair[side] for pair in pairs)
        low, high = wilson(found, len(pairs))
        f = r["figures"]
        lines.append(f"| {precision} | {found}/{len(pairs)} = {found / len(pairs):.3f} ({low:.3f}-{high:.3f}) | "
                     f"{f['token_f1']:.3f} | {f['mean_latency_s']:.2f} s | {f['p95_latency_s']:.2f} s | "
                     f"{f['p95_ttft_s']:.2f} s | {r['wall_s']:.0f} s | {peaks[precision] / 2**30:.2f} GiB |")
    lines += ["", f"- Identical answers: {identical} of {len(a['rows'])}.",
              f"- Key fact found by float32 only: {only_f32}; by bfloat16 only: {only_bf16}; exact McNemar p = "
              f"{mcnemar_p(only_f32, only_bf16):.3f} (two-sided).",
              f"- Speed: mean latency {a['figures']['mean_latency_s'] / b['figures']['mean_latency_s']:.2f}x "
              "lower in bfloat16.", end]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", help="workspace (default: a new temporary folder)")
    parser.add_argument("--no-write", action="store_true", help="print the section only")
    args = parser.parse_args()
    load = load_average()
    home = Path(args.home or tempfile.mkdtemp(prefix="affinage-precision-"))
    affinage(home, "ingest", str(ROOT / "affinage" / "demo" / "kb"))
    if not json.loads((affinage(home, "examples", "list", "--json")[0].strip().splitlines() or ["[]"])[-1]):
        affinage(home, "examples", "import", str(ROOT / "affinage" / "demo" / "examples.jsonl"))
    results, peaks = {}, {}
    for precision in PRECISIONS:
        print(f"[serving_precision] answering the golden set in {precision}", file=sys.stderr, flush=True)
        results[precision] = evaluate(home, precision)
        peaks[precision] = peak_of(home, precision)
    return publish(section(args, results, peaks, load), "serving_precision", not args.no_write)


if __name__ == "__main__":
    raise SystemExit(main())
