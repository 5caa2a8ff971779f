#!/usr/bin/env python
"""The canary's sequential test on simulated traffic: false rollbacks of an equal canary, detection of a worse one,
time to promote a better one.

    .venv/bin/python bench/canary_sim.py [--runs 2000] [--horizon 20000] [--every 50] [--seed 0]
        [--side-runs 1000] [--taus 0.025,0.1] [--no-write]

1. Each run is one canary: conversations arrive one by one (ids ``sim-RUN-I``), ``affinage.core.canary_split.
   in_canary`` puts each on an arm at the current share, and each conversation is bad on each of 6 signals
   independently with its arm's rate. Every ``--every`` conversations (the worker's poll) ``affinage.core.
   sequential.decide`` sees both arms' counts since the canary started, with the defaults of ``Settings``
   (steps 10 -> 50, 200 conversations per arm, 5 points tolerated, alpha 0.05); the share moves as it says, and
   a run ends at a rollback, a promotion or ``--horizon`` conversations.
2. Scenarios: equal arms; the candidate 5 points worse on thumbs_down; 5 points better on thumbs_down.
3. Targets: an equal canary rolled back in at most alpha of the runs, a worse one promoted in at most alpha (the
   two errors the test bounds); detection and time to promote are reported. A side table runs the equal and worse
   scenarios with other mixing scales tau (the default is tau = the tolerated degradation).
4. Rewrites the ``bench:canary_sim`` section of BENCHMARKS.md (``--no-write`` prints it only).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import Counter

import numpy as np
from _common import ROOT, command_line, cpu_model, load_average, markers, nproc, publish, wilson

sys.path.insert(0, str(ROOT))

from affinage.core.canary_split import in_canary  # noqa: E402
from affinage.core.sequential import SIGNALS, ArmOutcomes, decide  # noqa: E402
from affinage.core.settings import Settings  # noqa: E402

START, END = markers("canary_sim")
# base rates per conversation, in the order of SIGNALS (escalation = human_request)
BASE = {"thumbs_down": 0.10, "correction_submitted": 0.03, "rephrase": 0.08, "human_request": 0.04,
        "abstained": 0.12, "output_guard": 0.01}
SCENARIOS = {"equal": 0.0, "worse": 0.05, "better": -0.05}  # the canary's change on thumbs_down


def settings() -> dict:
    fields = Settings.model_fields
    return {"steps": list(fields["canary_steps"].default),
            "min_conversations": fields["canary_min_conversations"].default,
            "max_degradation": fields["canary_max_degradation"].default, "alpha": fields["canary_alpha"].default}


def run_once(run: int, scenario: str, config: dict, horizon: int, every: int, tau: float | None, seed: int) -> dict:
    """One canary from start to rollback, promotion or the horizon."""
    rng = np.random.default_rng([seed, list(SCENARIOS).index(scenario), run])
    active_rates = np.array([BASE[s] for s in SIGNALS])
    canary_rates = active_rates + np.array([SCENARIOS[scenario] if s == "thumbs_down" else 0.0 for s in SIGNALS])
    version, share = f"candidate-{seed}-{scenario}-{run}", config["steps"][0]
    n, bad = np.zeros(2, dtype=np.int64), np.zeros((2, len(SIGNALS)), dtype=np.int64)  # rows: active, canary
    advanced_at, done, step_start = [], 0, np.zeros(2, dtype=np.int64)
    while done < horizon:
        block = min(every, horizon - done)
        arms = np.fromiter((in_canary(f"sim-{run}-{i}", version, share) for i in range(done, done + block)),
                           dtype=bool, count=block)
        hits = rng.random((block, len(SIGNALS))) < np.where(arms[:, None], canary_rates, active_rates)
        for row, mask in ((0, ~arms), (1, arms)):
            n[row] += int(mask.sum())
            bad[row] += hits[mask].sum(axis=0)
        done += block
        counts = [ArmOutcomes(int(n[r]), {s: int(bad[r, j]) for j, s in enumerate(SIGNALS)}) for r in (0, 1)]
        decision = decide(*counts, share=share, steps=config["steps"], min_conversations=config["min_conversations"],
                          max_degradation=config["max_degradation"], alpha=config["alpha"], tau=tau,
                          since_step=(int(n[0] - step_start[0]), int(n[1] - step_start[1])))
        if decision.action == "advance":
            share, step_start = decision.share, n.copy()
            advanced_at.append(done)
        elif decision.action in ("rollback", "promote"):
            worst = max(decision.signals, key=lambda f: f.low).signal
            return {"outcome": decision.action, "at": done, "canary": int(n[1]), "share": share,
                    "signal": worst, "advanced_at": advanced_at}
    return {"outcome": "none", "at": horizon, "canary": int(n[1]), "share": share, "advanced_at": advanced_at}


def rate(runs: list[dict], outcome: str) -> tuple[int, int, str]:
    k, n = sum(r["outcome"] == outcome for r in runs), len(runs)
    low, high = wilson(k, n)
    return k, n, f"{k / n:.3f} ({k}/{n}; 95% CI {low:.3f}-{high:.3f})"


def when(runs: list[dict], outcome: str, key: str = "at") -> str:
    """Median (10th-90th percentile) conversations to ``outcome`` among the runs that reached it."""
    values = sorted(r[key] for r in runs if r["outcome"] == outcome)
    if not values:
        return "—"
    p10, p90 = np.percentile(values, [10, 90])
    return f"{statistics.median(values):,.0f} ({p10:,.0f}-{p90:,.0f})"


def verdict(k: int, n: int, target: float) -> str:
    if k / n <= target:
        return "PASS"
    return "FAIL (within sampling noise: the 95% CI includes the target)" if wilson(k, n)[0] <= target else "FAIL"


def simulate(scenarios: list[str], runs: int, config: dict, args, tau: float | None) -> dict[str, list[dict]]:
    return {s: [run_once(r, s, config, args.horizon, args.every, tau, args.seed) for r in range(runs)]
            for s in scenarios}


def scenario_rows(results: dict[str, list[dict]]) -> list[str]:
    rows = []
    for scenario, runs in results.items():
        cells = [f"{scenario} ({SCENARIOS[scenario] * 100:+.0f} points on thumbs_down)"]
        for outcome in ("rollback", "promote", "none"):
            cells.append(rate(runs, outcome)[2])
        cells += [when(runs, "rollback"), when(runs, "rollback", "canary"), when(runs, "promote")]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def section(results: dict, side: dict, config: dict, args, load: tuple, seconds: float) -> str:
    alpha, delta = config["alpha"], config["max_degradation"]
    k_fr, n_fr, fr = rate(results["equal"], "rollback")
    k_wp, n_wp, wp = rate(results["worse"], "promote")
    early = sum(r["outcome"] == "rollback" and r["canary"] < config["min_conversations"] for r in results["equal"])
    at_first = sum(r["outcome"] == "rollback" and r["share"] == config["steps"][0] for r in results["equal"])
    detected = [r for r in results["worse"] if r["outcome"] == "rollback"]
    by_signal = sum(r["signal"] == "thumbs_down" for r in detected)
    false_signals = Counter(r["signal"] for r in results["equal"] if r["outcome"] == "rollback").most_common()
    base = ", ".join(f"{s} {BASE[s]:.2f}" for s in SIGNALS)
    loads = " / ".join("n/a" if x is None else f"{x:.1f}" for x in load)
    command = command_line(__file__, [a for a in sys.argv[1:] if a != "--no-write"])
    lines = [
        START, "## Canary: the sequential test on simulated traffic (bench/canary_sim.py)", "",
        f"`{command}` on {cpu_model()} ({nproc()} cores), load average {loads} at the start / end; "
        f"{args.runs} seeded runs per scenario (seed {args.seed}), {seconds:.0f} s in all.", "",
        f"Each run is one canary under the `Settings` defaults (steps {' -> '.join(map(str, config['steps']))} "
        f"-> promote, {config['min_conversations']} conversations per arm, {delta * 100:.0f} points tolerated, "
        f"alpha {alpha} shared by {len(SIGNALS)} signals): conversations are put on an arm by "
        f"`canary_split.in_canary` at the current share, each is bad on each signal independently (active arm: "
        f"{base}), and `sequential.decide` runs every {args.every} conversations on the counts since the start "
        f"(promotion also needs the minimum per arm since the last step, as the worker does); the share moves as it says, up to {args.horizon:,} conversations. Mixing scale tau = {delta} "
        f"(the tolerated degradation).", "",
        f"**Target: an equal canary rolled back in at most alpha = {alpha} of the runs: "
        f"{verdict(k_fr, n_fr, alpha)}** (false rollbacks {fr}; {early} before {config['min_conversations']} "
        f"canary conversations, {at_first} at the first step; by signal: "
        f"{', '.join(f'{s} {k}' for s, k in false_signals) or 'none'}).", "",
        f"**Target: a canary {SCENARIOS['worse'] * 100:.0f} points worse promoted in at most alpha = {alpha} of the "
        f"runs: {verdict(k_wp, n_wp, alpha)}** (promoted {wp}).", "",
        f"A worse canary is rolled back in {rate(results['worse'], 'rollback')[2]} of the runs "
        f"({by_signal} of them on thumbs_down). Conversations are counted over both arms; canary conversations "
        f"are the canary arm's alone.", "",
        "| scenario | rolled back | promoted | neither by the horizon | conversations to rollback, median "
        "(10th-90th pct) | canary conversations to rollback | conversations to promotion |",
        "|---|---|---|---|---|---|---|",
        *scenario_rows(results),
    ]
    if side:
        lines += ["", f"Other mixing scales ({args.side_runs} runs each; equal and worse scenarios, same seeds):", "",
                  "| tau | equal: false rollbacks | worse: rolled back | worse: conversations to rollback | "
                  "equal: promoted | equal: conversations to promotion |", "|---|---|---|---|---|---|"]
        for tau, res in side.items():
            lines.append(f"| {tau:g} | {rate(res['equal'], 'rollback')[2]} | {rate(res['worse'], 'rollback')[2]} | "
                         f"{when(res['worse'], 'rollback')} | {rate(res['equal'], 'promote')[2]} | "
                         f"{when(res['equal'], 'promote')} |")
    lines.append(END)
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=2000, help="seeded runs per scenario")
    parser.add_argument("--horizon", type=int, default=20000, help="conversations at most per run")
    parser.add_argument("--every", type=int, default=50, help="conversations between two decisions (the poll)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--side-runs", type=int, default=1000, help="runs per scenario for each --taus value")
    parser.add_argument("--taus", default="0.025,0.1", help="other mixing scales to compare ('' for none)")
    parser.add_argument("--no-write", action="store_true", help="print the section, leave BENCHMARKS.md alone")
    args = parser.parse_args()
    load_start, started = load_average(), time.perf_counter()
    config = settings()
    results = simulate(list(SCENARIOS), args.runs, config, args, None)
    side = {float(t): simulate(["equal", "worse"], args.side_runs, config, args, float(t))
            for t in args.taus.split(",") if t.strip()}
    text = section(results, side, config, args, (load_start, load_average()), time.perf_counter() - started)
    return publish(text, "canary_sim", write=not args.no_write)


if __name__ == "__main__":
    raise SystemExit(main())
