"""The gate report a person decides from: report.json for machines, report.html (self-contained, plots inline)."""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

from affinage.core.pii import ERASED

from affinage.core.atomic import atomic_write_text
from tuning.checks import Check, verdict

REPORT_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:70rem;margin:2rem auto;padding:0 1rem}"
    "table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ccc;padding:.3rem .6rem;text-align:left}"
    ".pass td:last-child{color:#2f7d4f}.fail td{background:#fdecea}.verdict{font-size:1.3rem;font-weight:bold}"
    "img{max-width:100%}"
)
# The page's one stylesheet, allowed by hash: no 'unsafe-inline' where the report is shown.
REPORT_STYLE_HASH = "'sha256-" + base64.b64encode(hashlib.sha256(REPORT_STYLE.encode()).digest()).decode() + "'"


def _png(figure) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def loss_curves_plot(curves: dict) -> str | None:
    """Training and validation loss by step, from the candidate's manifest."""
    import matplotlib.pyplot as plt

    if not curves.get("train"):
        return None
    figure, axes = plt.subplots(figsize=(6, 3.2))
    for label, points, style in (("train", curves["train"], "-"), ("validation", curves.get("validation", []), "o-")):
        if points:
            axes.plot([p[0] for p in points], [p[1] for p in points], style, label=label, markersize=3)
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.set_title("Training and validation loss")
    axes.legend()
    axes.grid(alpha=0.3)
    return _png(figure)


def checks_plot(checks: list[Check]) -> str | None:
    """Small multiples: active vs candidate per measure, the threshold dashed, red where the check failed."""
    import matplotlib.pyplot as plt

    if not checks:
        return None
    columns = min(4, len(checks))
    rows = -(-len(checks) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.1 * columns, 2.6 * rows), squeeze=False)
    for ax in axes.flat[len(checks):]:
        ax.axis("off")
    for ax, check in zip(axes.flat, checks):
        labels, values = ["candidate"], [check.after]
        if check.before is not None:
            labels, values = ["active", "candidate"], [check.before, check.after]
        colors = ["#8a94a6"] * (len(values) - 1) + ["#2f7d4f" if check.passed else "#c0392b"]
        bars = ax.bar(labels, values, color=colors)
        if check.before_interval is not None:  # a rate: both versions' Wilson intervals
            for bar, value, (low, high) in zip(bars, values, [check.before_interval, check.interval]):
                ax.errorbar(bar.get_x() + bar.get_width() / 2, value, yerr=[[max(0.0, value - low)], [max(0.0, high - value)]],
                            color="black", capsize=3, linewidth=1)
        ax.axhline(check.threshold, color="black", linestyle="--", linewidth=1)
        ax.set_ylim(0, max([*values, check.threshold, *(check.interval or [])]) * 1.15 or 1.0)
        ax.set_title(f"{check.gate}: {check.name}" + (f" ({check.view})" if check.view else ""), fontsize=8)
        ax.tick_params(labelsize=7)
    figure.tight_layout()
    return _png(figure)


def drift_plot(topics: dict) -> str | None:
    """Share of questions per topic in the reference and recent windows, with each topic's drift p-value."""
    import matplotlib.pyplot as plt

    if not topics:
        return None
    names = list(topics)
    figure, axes = plt.subplots(figsize=(max(5, 0.9 * len(names)), 3.2))
    positions = range(len(names))
    axes.bar([p - 0.2 for p in positions], [topics[n]["share_reference"] for n in names], 0.4, label="reference")
    axes.bar([p + 0.2 for p in positions], [topics[n]["share_recent"] for n in names], 0.4, label="recent")
    for p, name in zip(positions, names):
        p_value = topics[name].get("p_value")
        if p_value is not None:
            axes.annotate(f"p={p_value:.2f}", (p, max(topics[name]["share_reference"], topics[name]["share_recent"])),
                          ha="center", va="bottom", fontsize=7)
    axes.set_xticks(list(positions), names, rotation=30, ha="right", fontsize=7)
    axes.set_ylabel("share of questions")
    axes.set_title("Input drift by topic")
    axes.legend()
    return _png(figure)


def build_report(candidate: dict, checks: list[Check], extra: dict | None = None) -> dict:
    extra = extra or {}
    return {
        "candidate": candidate["id"],
        "created_at": datetime.now(timezone.utc).isoformat(),
        "passed": verdict(checks),
        "gates": {gate: all(c.passed for c in checks if c.gate == gate) for gate in dict.fromkeys(c.gate for c in checks)},
        "checks": [c.to_json() for c in checks],
        "training": {"method": candidate.get("method"), "datasets": candidate.get("datasets"),
                     "metrics": candidate.get("metrics"), "curves": candidate.get("curves")},
        **extra,
    }


def render_html(report: dict, checks: list[Check]) -> str:
    e = html.escape
    plots = [("Training", loss_curves_plot(report["training"].get("curves") or {})),
             ("Active vs candidate", checks_plot(checks)),
             ("Drift", drift_plot((report.get("drift") or {}).get("topics", {})))]
    rows = "\n".join(check_row(c) for c in checks)
    figures = "\n".join(f"<h2>{e(title)}</h2><img alt='{e(title)}' src='data:image/png;base64,{data}'>"
                        for title, data in plots if data)
    verdict_text = "PASSED every gate" if report["passed"] else "FAILED: " + ", ".join(
        e(g) for g, ok in report["gates"].items() if not ok)
    training = report["training"]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Gate report {e(report['candidate'])}</title>
<style>{REPORT_STYLE}</style></head><body>
<h1>Gate report: {e(report['candidate'])}</h1>
<p class="verdict">{verdict_text}</p>
<p>Method {e(str(training.get('method')))}, datasets {e(', '.join(d['id'] for d in training.get('datasets') or []))},
report written {e(report['created_at'][:19])} UTC.</p>
<p>Rates show a 95% Wilson interval; a score's interval is that of the mean difference, candidate minus active,
over the same questions. Each check names its test and the level it ran at: <code>gate_alpha</code> split evenly
over the no-worse checks (Bonferroni), so a candidate no worse than the active version fails one with probability
at most <code>gate_alpha</code>.</p>
<table><tr><th>gate</th><th>measure</th><th>view</th><th>active</th><th>candidate</th><th>interval</th>
<th>p-value</th><th>rule (threshold)</th><th></th></tr>
{rows}
</table>
{views_side_by_side(checks)}
{details(report)}
{figures}
</body></html>
"""


def _interval(bounds: list[float] | None) -> str:
    return "" if bounds is None else f"[{bounds[0]:.3g}, {bounds[1]:.3g}]"


def check_row(c: Check) -> str:
    e = html.escape
    before = "" if c.before is None else f"{c.before:.4g} {_interval(c.before_interval)}"
    p_value = "" if c.p_value is None else f"{c.p_value:.3g}"
    return (f"<tr class={'pass' if c.passed else 'fail'}><td>{e(c.gate)}</td><td>{e(c.name)}</td><td>{e(c.view)}</td>"
            f"<td>{e(before)}</td><td>{c.after:.4g}</td><td>{e(_interval(c.interval))}</td><td>{e(p_value)}</td>"
            f"<td>{e(c.rule)} ({c.threshold:.4g})</td><td>{'pass' if c.passed else 'FAIL'}</td></tr>")


def views_side_by_side(checks: list[Check]) -> str:
    """The safety checks measured both ways, one row each: the model's own text beside what a user receives."""
    e = html.escape
    by_name: dict[str, dict[str, Check]] = {}
    for c in checks:
        if c.view:
            by_name.setdefault(c.name, {})[c.view] = c
    if not by_name:
        return ""

    def cell(c: Check | None) -> str:
        if c is None:
            return "<td colspan=3></td>"
        return (f"<td>{c.before:.3g} &rarr; {c.after:.3g}</td><td>{e(_interval(c.interval))}</td>"
                f"<td>{'pass' if c.passed else 'FAIL'}</td>")

    rows = "".join(f"<tr><td>{e(name)}</td>{cell(views.get('model'))}{cell(views.get('as served'))}</tr>"
                   for name, views in by_name.items())
    return ("<h2>Safety: the model's own text and as served</h2><p>Model: the raw generated text, every planted "
            "sentence shown to it. As served: what a user receives, after the prompt-leak guard and with links "
            "outside the link policy removed.</p><table><tr><th>measure</th><th colspan=3>model (active &rarr; "
            "candidate, interval, verdict)</th><th colspan=3>as served</th></tr>" + rows + "</table>")


def details(report: dict) -> str:
    """What the numbers rest on: set sizes, output drift, input drift, the safety probes that worked, and answers
    side by side."""
    e = html.escape
    parts = []
    if report.get("sets"):
        parts.append("<h2>Held-out sets</h2><p>" + e(", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in report["sets"].items()))
                     + "</p>")
    if report.get("output_drift"):
        drift = report["output_drift"]
        rows = "".join(f"<tr><td>{e(name.replace('_', ' '))}</td><td>{v['active']:.3g}</td><td>{v['candidate']:.3g}</td>"
                       f"<td>{v['difference']:+.3g}</td></tr>" for name, v in drift.items() if isinstance(v, dict))
        parts.append("<h2>Output drift (golden answers)</h2><table><tr><th></th><th>active</th><th>candidate</th>"
                     f"<th>change</th></tr>{rows}</table>")
    drift = report.get("drift") or {}
    if drift.get("skipped"):
        parts.append(f"<h2>Input drift</h2><p>{e(drift['skipped'])}</p>")
    elif drift.get("overall"):
        o = drift["overall"]
        drifted = [name for name, t in drift.get("topics", {}).items() if t.get("drifted")]
        parts.append(f"<h2>Input drift</h2><p>Questions since {e(drift['since'][:10])} against before: MMD p-value "
                     f"{o['p_value']:.3g} ({'drifted' if o['drifted'] else 'no drift'}; "
                     f"{o['n_reference']} vs {o['n_recent']} questions). Drifted topics: "
                     f"{e(', '.join(drifted)) or 'none'}.</p>")
    worked = [(side, probe) for side, probes in (report.get("probes_that_worked") or {}).items() for probe in probes]
    if worked:
        rows = "".join(f"<tr><td>{e(side)}</td><td>{e(p['family'])}</td><td>{e(p['question'])}</td>"
                       f"<td>{e(p['passage'])}</td><td>{e(p['answer'])}</td></tr>" for side, p in worked)
        parts.append("<h2>Safety probes that worked</h2><p>Answers that obeyed a planted passage or leaked what they "
                     "should not (PII scrubbed here).</p><table><tr><th>version</th><th>probe</th><th>question</th>"
                     f"<th>planted passage</th><th>answer</th></tr>{rows}</table>")
    if report.get("examples"):
        rows = "".join(f"<tr><td>{e(x['question'])}</td><td>{e(x['reference'])}</td><td>{e(x['active'])}</td>"
                       f"<td>{e(x['candidate'])}</td></tr>" for x in report["examples"])
        parts.append("<h2>Answers side by side</h2><table><tr><th>question</th><th>reference</th><th>active</th>"
                     f"<th>candidate</th></tr>{rows}</table>")
    return "\n".join(parts)


def write_report(folder: Path, candidate: dict, checks: list[Check], extra: dict | None = None) -> dict:
    """Write report.json and report.html beside the candidate (each atomically); returns the report."""
    report = build_report(candidate, checks, extra)
    atomic_write_text(folder / "report.json", json.dumps(report, indent=2, ensure_ascii=False))
    atomic_write_text(folder / "report.html", render_html(report, checks))
    return report




def _pattern(texts: Iterable[str]) -> re.Pattern | None:
    texts = sorted({t.strip() for t in texts if t and t.strip()}, key=len, reverse=True)
    return re.compile("|".join(re.escape(t) for t in texts), re.IGNORECASE) if texts else None


def scrub(value, texts: Iterable[str], keep: tuple[str, ...] = ()):
    """``value`` (JSON) with every occurrence of ``texts`` (case aside) replaced by ``[erased]``, and how many there
    were; keys in ``keep`` are left alone (a verdict's timestamp, which decisions compare)."""
    pattern = _pattern(texts)
    count = 0

    def walk(item):
        nonlocal count
        if isinstance(item, str):
            clean, n = pattern.subn(ERASED, item)
            count += n
            return clean
        if isinstance(item, dict):
            return {k: v if k in keep else walk(v) for k, v in item.items()}
        if isinstance(item, list):
            return [walk(v) for v in item]
        return item

    return (walk(value), count) if pattern else (value, 0)


def scrub_report(folder: Path, texts: Iterable[str]) -> int:
    """Replace erased text in a version's report.json and report.html (each atomically; the page re-rendered from
    the scrubbed JSON, the page first, so a rerun after a crash still finds the quotes in the JSON). Today's reports
    quote only bundled material (golden set, probes) and the versions' answers; this catches an answer that repeats
    erased text, and any quote a later report adds. Returns the quotes replaced in report.json."""
    texts = list(texts)
    report_file = folder / "report.json"
    if not report_file.is_file() or _pattern(texts) is None:
        return 0
    report, count = scrub(json.loads(report_file.read_text(encoding="utf-8")), texts)
    if count:
        checks = [Check(**c) for c in report.get("checks", [])]
        atomic_write_text(folder / "report.html", render_html(report, checks))
        atomic_write_text(report_file, json.dumps(report, indent=2, ensure_ascii=False))
    return count
