"""The loop, stage by stage: failures, corrections, synth, datasets, drift, the worker and the demo."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from affinage.core.settings import Settings, load_settings


def cmd_failures(settings: Settings, args: argparse.Namespace) -> int:
    from datetime import datetime, timedelta, timezone

    from affinage.core.store import Store
    from agent.triage import render_text, triage
    from retrieval.embeddings import SentenceEmbeddings

    if args.days <= 0:
        raise ValueError(f"--days must be positive, got {args.days}")
    since = datetime.now(timezone.utc) - timedelta(days=args.days)
    topics = triage(Store(settings.db_url), SentenceEmbeddings(settings.embedder).encode, since=since,
                    threshold=args.threshold)
    print(json.dumps([t.to_json() for t in topics]) if args.json else render_text(topics))
    return 0


def cmd_corrections(settings: Settings, args: argparse.Namespace) -> int:
    from affinage.core.store import Store
    from agent.corrections import (
        correction_info,
        pending_corrections,
        review_correction,
    )

    store = Store(settings.db_url)
    if args.action in ("approve", "reject"):
        example = review_correction(store, args.id, args.action == "approve", reviewer=f"cli:{os.environ.get('USER', 'operator')}")
        print(f"approved {args.id}: example {example.id} is in the example bank" if example else f"rejected {args.id}")
        return 0
    pending = pending_corrections(store)
    if args.json:
        print(json.dumps([correction_info(f, i) for f, i in pending]))
    else:
        for feedback, interaction in pending:
            print(f"{feedback.id}  by {feedback.user}\n  Q: {interaction.question}\n  A: {interaction.answer[:200]}\n"
                  f"  correction: {feedback.correction}")
        print(f"{len(pending)} corrections waiting for review")
    return 0


def cmd_synth(settings: Settings, args: argparse.Namespace) -> int:
    from affinage.cycle import build_dataset

    if args.paraphrases is not None:
        settings = settings.model_copy(update={"paraphrases": args.paraphrases})
    manifest = build_dataset(settings, progress=not args.json).manifest
    if args.json:
        print(json.dumps({"id": manifest["id"], "counts": manifest["counts"], "filters": manifest["filters"]}))
    else:
        counts = ", ".join(f"{n} {kind}" for kind, n in manifest["counts"].items())
        dropped = ", ".join(f"{name} {n}" for name, n in manifest["filters"]["dropped"].items())
        print(f"dataset {manifest['id']}: {counts}")
        print(f"  dropped by filters: {dropped}; skipped interactions: {manifest['filters']['skipped_interactions'] or 'none'}")
        print(f"  PII redacted: {manifest['filters']['pii_redacted'] or 'none'}")
        for line in cap_lines(manifest["filters"].get("per_user_cap")):
            print(f"  {line}")
    return 0


def cap_lines(cap: dict | None) -> list[str]:
    """The per-user cap in words: its size and why, then each capped user (the name the log records: an API key's
    or a CLI account's, never a customer's) with the failures kept and dropped and the rows dropped by kind."""
    if not cap:
        return []
    rule = (f"max({cap['floor']} failures, {cap['share']:g} of the failures kept); "
            f"{cap['failures']} failures offered; held-out rows are never dropped")
    if cap["cap"] is None:
        return [f"per-user cap: nobody over it ({rule})"]
    lines = [f"per-user cap: {cap['cap']} failures a user ({rule})"]
    for user, u in cap["users"].items():
        rows = ", ".join(f"{kind} {n}" for kind, n in u["rows_dropped"].items()) or "none"
        lines.append(f"  {user}: kept the {u['kept']} most recent of {u['failures']} failures, dropped "
                     f"{u['dropped']} (rows dropped: {rows})")
    return lines


def cmd_datasets(settings: Settings, args: argparse.Namespace) -> int:
    from affinage.core.datasets import list_datasets, superseded

    manifests = list_datasets(settings.datasets_dir, include_superseded=True)
    if args.json:
        print(json.dumps(manifests))
    for m in [] if args.json else manifests:
        if superseded(m):  # a tombstone: an erasure removed its rows
            removed = " ".join(f"{kind}={n}" for kind, n in m.get("removed", {}).items())
            print(f"{m['id']}  {m['created_at'][:19]}  superseded by {m.get('superseded_by') or 'nothing'} "
                  f"after an erasure ({m['erased_at'][:19]}; removed {removed})")
            continue
        counts = " ".join(f"{kind}={n}" for kind, n in m["counts"].items())
        supersedes = f"  supersedes={m['supersedes']}" if m.get("supersedes") else ""
        print(f"{m['id']}  {m['created_at'][:19]}  {counts}  base={m['base_model']}  teacher={m['teacher']}{supersedes}")
    return 0


def cmd_drift(settings: Settings, args: argparse.Namespace) -> int:
    from affinage.core.store import Store
    from affinage.gating import traffic_drift
    from retrieval.embeddings import SentenceEmbeddings

    if args.days <= 0:
        raise ValueError(f"--days must be positive, got {args.days}")
    report = traffic_drift(settings, Store(settings.db_url), SentenceEmbeddings(settings.embedder).encode, args.days)
    if args.json:
        print(json.dumps(report))
        return 0
    if report.get("skipped"):
        print(f"input drift: {report['skipped']}")
    else:
        o = report["overall"]
        print(f"input drift, last {args.days:g} days vs before: MMD p-value {o['p_value']:.3g} "
              f"({'DRIFTED' if o['drifted'] else 'no drift'}; {o['n_recent']} vs {o['n_reference']} questions)")
        for name, t in report["topics"].items():
            p_value = "-" if t["p_value"] is None else f"{t['p_value']:.3g}"
            print(f"  {name:30} share {t['share_reference']:.2f} -> {t['share_recent']:.2f}  p {p_value}"
                  f"{'  DRIFTED' if t['drifted'] else ''}")
    for dataset, s in report["stale_datasets"].items():
        print(f"dataset {dataset}: {s['stale']}/{s['rows']} training questions no longer match recent traffic")
    return 0


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    from affinage.worker import Worker

    worker = Worker(settings)
    mode = "one check" if args.once else f"checking every {settings.worker_poll_seconds:g} s"
    print(f"affinage worker {worker.owner}: {mode}; SIGTERM or Ctrl-C stops it", file=sys.stderr)
    job = worker.run(once=args.once)
    if not args.once or job is None:
        print("stopped" if not args.once else "no trigger fired and no job waits", file=sys.stderr)
        return 0
    detail = job.error or (job.outputs or {}).get("outcome")
    print(f"job {job.id}: {job.state}" + (f" ({detail})" if detail else ""))
    return 1 if job.state == "failed" else 0


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    import tempfile

    from affinage.demo_report import render
    from affinage.demo_run import TRAFFIC, run_demo

    if args.home is None:  # never the default ./.affinage: the demo writes a whole workspace
        settings = load_settings(tempfile.mkdtemp(prefix="affinage-demo-"))
    result = run_demo(settings, Path(args.traffic) if args.traffic else TRAFFIC, progress=not args.json)
    print(json.dumps(result, ensure_ascii=False) if args.json else render(result))
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("failures", help="group recent failures into topics, each with a suggested remedy")
    p.add_argument("--days", type=float, default=30, help="look back this many days (default 30)")
    p.add_argument("--threshold", type=float, default=0.6, help="cosine similarity that joins questions into a topic")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_failures)

    p = sub.add_parser("corrections", help="review submitted corrections (approved ones join the example bank)")
    p.add_argument("action", nargs="?", default="list", choices=["list", "approve", "reject"])
    p.add_argument("id", nargs="?", help="the correction (feedback) id, for approve and reject")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_corrections)

    p = sub.add_parser("synth", help="build a training dataset from failures not used before")
    p.add_argument("--paraphrases", type=int, help="paraphrases per failed question (default: setting paraphrases)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("datasets", help="list datasets with their counts and lineage")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_datasets)

    p = sub.add_parser("drift", help="input drift of recent questions by topic, and training data gone stale")
    p.add_argument("--days", type=float, default=7, help="the recent window (default 7 days)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_drift)

    p = sub.add_parser("worker", help="run the improvement loop in the background: triggers, durable jobs, gates")
    p.add_argument("--once", action="store_true", help="check the triggers, run at most one job, exit (cron, tests)")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("demo", help="replay support traffic on the demo knowledge base, run one improvement cycle, "
                                     "promote, and print before/after figures (a fresh workspace)")
    p.add_argument("--home", default=argparse.SUPPRESS, help="a new workspace folder (default: a new temporary one)")
    p.add_argument("--traffic", help="JSONL of question, answer, key_fact, paraphrases (default: the bundled one)")
    p.add_argument("--json", action="store_true", help="print every figure as one JSON object")
    p.set_defaults(func=cmd_demo)
