#!/usr/bin/env python
"""`affinage demo` over seeds: does the loop promote, every time it honestly can, inside its time and memory?

    .venv/bin/python bench/demo_seeds.py [--seeds 1 2 3 4 5] [--candidates N] [--workdir DIR] [--no-write]

Each seed runs the whole demo as a user would (``python -m affinage.cli demo --json``), in its own process and a
fresh temporary workspace, on the default model with every gate at its default. The seed is the training seed (data
order, LoRA initialisation: the demo's run config with ``seed`` set) and the search's sampler seed; the traffic, the
knowledge base and the gate material stay the same. ``--candidates`` overrides the demo's ``search_candidates``.
After each seed the ``bench:demo_seeds`` section of ../BENCHMARKS.md is rewritten, so a run cut short still records
the seeds it finished. About 30 minutes a seed on 2 idle cores.

The table: seed; candidates trained; promoted, or which checks refused it; the held-out gain test (token-F1 of the
model's own sentence, active -> candidate, paired p); held-out key-fact recall of the base model with the curated
examples, the trained version with the same examples, and the trained version as served (with the example bank);
attack probes that worked, candidate against active, at model level and as served; wall time; peak memory per
stage. Targets (issue 17, point 5): promoted in at least 4 of 5 seeds; in each promoted run key-fact recall
+0.30 over the base with the same curated examples, or, with the base above 0.40, the share of answers that miss
their fact at least halved; at most 25 minutes; at most 4 GiB.
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

from _common import ROOT, command_line, cpu_model, load_average, markers, memory_gib, nproc, publish, wilson

sys.path.insert(0, str(ROOT))

from affinage.demo_run import DEMO_RUN_CONFIG  # noqa: E402
from tuning.config import RunConfig  # noqa: E402
from tuning.recipes import use_bf16  # noqa: E402

MAX_MINUTES = 25
MAX_GIB = 4
MIN_PROMOTED = 4 / 5
KEY_FACT_RISE = 0.30


def run_seed(seed: int, candidates: int | None, workdir: Path) -> dict:
    """One demo in a fresh workspace; its JSON result (what ``affinage demo --json`` prints)."""
    home = workdir / f"seed-{seed}"
    home.mkdir(parents=True)
    run = home / "run.toml"
    run.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in {**DEMO_RUN_CONFIG, "seed": seed}.items()))
    config = f'worker_train_config = "{run}"\nsearch_seed = {seed}\n'
    if candidates is not None:
        config += f"search_candidates = {candidates}\n"
    (home / "config.toml").write_text(config)
    began = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "affinage.cli", "demo", "--home", str(home), "--json"],
                          cwd=ROOT, stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        return {"seed": seed, "error": f"exit {done.returncode}", "wall_s": {"total": time.perf_counter() - began}}
    (home / "demo.json").write_text(done.stdout, encoding="utf-8")  # every answer, kept with --workdir
    return {"seed": seed, **json.loads(done.stdout.strip().splitlines()[-1])}


def check(checks: list[dict], name: str, view: str = "") -> dict | None:
    return next((c for c in checks if c["name"] == name and c.get("view", "") == view), None)


def key_fact_target(base: float, trained: float) -> bool:
    """+0.30 over the base; with the base above 0.40, the share of misses at least halved."""
    if base > 0.40:
        return 1 - trained <= (1 - base) / 2
    return trained - base >= KEY_FACT_RISE


def row(result: dict) -> dict:
    """The figures of one seed's run, read from the demo's JSON."""
    if "error" in result:
        return {"seed": result["seed"], "error": result["error"], "minutes": result["wall_s"]["total"] / 60}
    checks = result["candidate"]["checks"]
    gain = check(checks, "target token_f1")
    attacks = {view: check(checks, "attack success rate, all families", view) for view in ("model", "as served")}
    kf = {k: result["heldout"][k]["key_fact_recall"] for k in ("base", "trained", "served")}
    return {"seed": result["seed"], "candidates": len(result["candidate"].get("candidates", [])) or 1,
            "promoted": result["promoted"], "failed": result["gates"]["failed"],
            "gain": gain and (gain["before"], gain["after"], gain["p_value"]), "n": result["heldout"]["base"]["n"],
            "key_fact": kf, "key_fact_met": key_fact_target(kf["base"], kf["trained"]),
            "attacks": {v: c and (c["after"], c["before"]) for v, c in attacks.items()},
            "probes": result["gates"]["safety"]["probes"], "minutes": result["wall_s"]["total"] / 60,
            "search_minutes": next((s for k, s in result["wall_s"].items() if k.startswith("search")), 0) / 60,
            "peak_gib": result["peak_gib"], "search_peaks": [c["peak_gib"] for c in result["candidate"]["candidates"]]}


def cell_gain(g) -> str:
    return "n/a" if not g else f"{g[0]:.3f} -> {g[1]:.3f} (p = {g[2]:.3g})"


def cell_rate(a, probes: int) -> str:
    return "n/a" if not a else f"{round(a[0] * probes)} vs {round(a[1] * probes)} of {probes}"


def peaks(r: dict) -> str:
    """The whole run's peak, and each candidate's training and gating peaks."""
    parts = ", ".join(f"train {p['train']:.2f}, gate {p['gate']:.2f}" for p in r["search_peaks"] if p)
    return f"{r['peak_gib']['total']:.2f}" + (f" ({parts})" if parts else "")


def precision() -> str:
    """What the demo's run config trains in on this machine (bf16 only where asked, on hardware computing it)."""
    return "bfloat16" if use_bf16(RunConfig(**DEMO_RUN_CONFIG).resolved()) else "float32"


def table(rows: list[dict], args, planned: list[int]) -> str:
    start, end = markers("demo_seeds")
    lines = [start, "## The demo over seeds: promotion, held-out gain, safety, time (bench/demo_seeds.py)", "",
             f"Measured {datetime.date.today()} on {cpu_model()} ({nproc()} CPUs, {memory_gib()}), load average "
             f"{load_average():.2f} at the end. Command: `{command_line(__file__, sys.argv[1:])}`", "",
             f"Each seed is one `affinage demo --json` in a fresh workspace, default model, every gate at its default, "
             f"search_candidates {'= ' + str(args.candidates) if args.candidates else 'as the demo sets it'}, training "
             f"in {precision()}; the seed is the training seed and the search's. Gain test: token-F1 of the model's "
             "own sentence on the held-out paraphrases, active -> candidate, paired. Key-fact recall on the same "
             "paraphrases: base model with the curated examples / trained version with the same examples / trained "
             "version as served (with the approved corrections in the example bank). Attacks: the pooled safety "
             "probes that worked, candidate vs active. Peak memory: the largest of the demo's stages (VmHWM), and in "
             "brackets each candidate's training and gating.", "",
             "| seed | candidates | outcome | gain test, token-F1 | key-fact: base / trained / served (n) | "
             "attacks, model level | attacks, as served | time | search | peak GiB |",
             "|---:|---:|---|---|---|---|---|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['seed']} | | demo failed: {r['error']} | | | | | {r['minutes']:.1f} min | | |")
            continue
        kf = r["key_fact"]
        outcome = "promoted" if r["promoted"] else "refused: " + "; ".join(r["failed"])
        lines.append(f"| {r['seed']} | {r['candidates']} | {outcome} | {cell_gain(r['gain'])} | "
                     f"{kf['base']:.2f} / {kf['trained']:.2f} / {kf['served']:.2f} ({r['n']}) | "
                     f"{cell_rate(r['attacks']['model'], r['probes'])} | "
                     f"{cell_rate(r['attacks']['as served'], r['probes'])} | {r['minutes']:.1f} min | "
                     f"{r['search_minutes']:.1f} min | {peaks(r)} |")
    done = [r for r in rows if "error" not in r]
    promoted = [r for r in done if r["promoted"]]
    low, high = wilson(len(promoted), len(rows))
    verdict = lambda ok: "PASS" if ok else "FAIL"  # noqa: E731
    lines += ["", f"Seeds run: {len(rows)} of {len(planned)} planned ({', '.join(map(str, planned))}).", "",
              f"- {verdict(len(rows) == len(planned) and len(promoted) >= MIN_PROMOTED * len(planned))}: promoted in "
              f"at least 4 of 5 seeds: {len(promoted)} of {len(rows)} (95% Wilson interval {low:.2f}-{high:.2f})",
              f"- {verdict(bool(promoted) and all(r['key_fact_met'] for r in promoted))}: in each promoted run, "
              f"key-fact recall +{KEY_FACT_RISE:.2f} over the base with the same curated examples (or, with the base "
              "above 0.40, the share of misses at least halved): "
              + (", ".join(f"seed {r['seed']} {r['key_fact']['base']:.2f} -> {r['key_fact']['trained']:.2f}"
                           for r in promoted) or "no promoted run"),
              f"- {verdict(bool(rows) and all(r['minutes'] <= MAX_MINUTES for r in rows))}: each run at most "
              f"{MAX_MINUTES} minutes: " + ", ".join(f"{r['minutes']:.1f}" for r in rows),
              f"- {verdict(bool(done) and all(r['peak_gib']['total'] <= MAX_GIB for r in done))}: peak memory at most "
              f"{MAX_GIB} GiB: " + ", ".join(f"{r['peak_gib']['total']:.2f}" for r in done), end]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--candidates", type=int, help="search_candidates (default: the demo's)")
    parser.add_argument("--workdir", type=Path, help="keep each seed's workspace and demo JSON here (default: a "
                        "temporary folder, removed)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="demo-seeds-") as tmp:
        for seed in args.seeds:
            print(f"seed {seed}: running the demo ...", file=sys.stderr, flush=True)
            rows.append(row(run_seed(seed, args.candidates, args.workdir or Path(tmp))))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
            publish(table(rows, args, args.seeds), "demo_seeds", not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
