"""Erasing a customer's data (GDPR art. 17) from the command line."""

from __future__ import annotations

import argparse
import getpass
import json
import sys

from affinage.core.settings import Settings


def cmd_forget(settings: Settings, args: argparse.Namespace) -> int:
    from affinage.core.store import Store
    from affinage.erasure import KINDS, Selector, SelectorError, check, forget, reapply

    given = {kind: getattr(args, kind) for kind in KINDS if getattr(args, kind) is not None}
    try:
        if args.reapply and (given or args.check):
            raise SelectorError("--reapply replays every recorded erasure: give it no selector and no --check")
        selector = None if args.reapply else Selector(**given)
    except SelectorError as error:
        print(f"affinage: error: forget: {error} (use --customer, --conversation, --interaction or --matching)",
              file=sys.stderr)
        return 2
    store = Store(settings.db_url)
    actor = f"cli:{getpass.getuser()}"
    say = None if args.json else (lambda message: print(message, file=sys.stderr))
    if args.reapply:
        report = reapply(settings, store, actor, progress=say)
        if args.json:
            print(json.dumps(report))
            return 0
        counts = ", ".join(f"{n} {table}" for table, n in report["counts"].items())
        print(f"{report['erasures']} recorded erasures reapplied: {counts}")
        _print_erasure_effects(report)
        return 0
    if args.check:
        left = check(settings, store, selector)
        if args.json:
            print(json.dumps({"selector": selector.kind, "selector_hash": selector.hash, "left": left,
                              "clean": not left}))
        elif left:
            print(f"NOT clean: left for this {selector.kind}: " + ", ".join(f"{kind} {n}" for kind, n in left.items()))
        else:
            print(f"clean: nothing left for this {selector.kind} in the database, the job logs or the datasets")
        return 1 if left else 0
    report = forget(settings, store, selector, actor, progress=say)
    if args.json:
        print(json.dumps(report))
        return 0
    if report["nothing_found"]:
        print(f"nothing found for this {selector.kind}; the request is recorded as erasure {report['erasure_id']}")
        return 0
    counts = report["counts"]
    print(f"erasure {report['erasure_id']} ({selector.kind}, sha256 {report['selector_hash'][:12]}…)"
          + (": resumed and finished" if report["resumed"] else ""))
    for table in ("interactions", "feedback", "examples", "job_logs"):
        extra = f" ({counts['corrections']} with corrections)" if table == "feedback" and counts["corrections"] else ""
        print(f"  {table:13} {counts[table]:>6} deleted{extra}")
    _print_erasure_effects(report)
    return 0


def _print_erasure_effects(report: dict) -> None:
    for item in report["datasets"]:
        removed = ", ".join(f"{kind} {n}" for kind, n in (item.get("removed") or {}).items()) or "no rows"
        new = item.get("new") or "nothing (no rows left)"
        print(f"  dataset {item['old']} superseded by {new} ({removed} removed)")
    if not report["datasets"]:
        print("  no dataset held rows of it")
    print("  versions flagged 'trained on erased data': " + (", ".join(report["versions"]) or "none"))
    if report.get("follow_up_job"):
        print(f"  follow-up job queued: {report['follow_up_job']}")


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("forget", help="erase one customer's data (GDPR art. 17): interactions, feedback, corrections, "
                                       "example-bank entries, job-log lines; supersede datasets, flag versions")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--customer", help="the end customer's id (OpenAI's `user`, the web chat's Customer ID)")
    which.add_argument("--conversation", help="a conversation id")
    which.add_argument("--interaction", help="an interaction id")
    which.add_argument("--matching", help="text such as an email address or a name, matched case-insensitively in "
                                          "questions, answers, corrections, comments and the example bank")
    p.add_argument("--check", action="store_true", help="erase nothing: say what is left (exit code 1 if anything)")
    p.add_argument("--reapply", action="store_true", help="replay every recorded erasure by its ids (after a restore)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.set_defaults(func=cmd_forget)
