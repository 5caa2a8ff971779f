"""What `affinage demo` prints at the end: the held-out figures of the four set-ups, and the forgetting and safety
gates' figures read from the candidate's gate report."""

from __future__ import annotations

import textwrap

VARIANTS = (("base", "base model, curated examples only (before)"),
            ("bank", "base model + approved corrections in the example bank"),
            ("trained", "trained version, curated examples only (training alone)"),
            ("served", "trained version + example bank (what users get now)"))


def minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}m{seconds % 60:04.1f}s"


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
              "wall time: " + ", ".join(f"{k.split(':')[0]} {minutes(v)}" for k, v in result["wall_s"].items()),
              "peak memory: " + ", ".join(f"{k.split(':')[0]} {v:.2f} GiB" for k, v in result["peak_gib"].items())]
    parts = [c for c in result["candidate"].get("candidates", []) if c.get("peak_gib")]
    if parts:
        lines.append("  in the search: " + ", ".join(f"{c['candidate']} training {c['peak_gib']['train']:.2f} GiB, "
                                                     f"gating {c['peak_gib']['gate']:.2f} GiB" for c in parts))
    return "\n".join(lines)
