"""Model versions: train, list, gate, approve or reject, promote, roll back."""

from __future__ import annotations

import argparse
import getpass
import json
from pathlib import Path

from affinage.core.settings import Settings
from affinage.core.settings_loop import METHODS


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def cmd_train(settings: Settings, args: argparse.Namespace) -> int:
    from tuning.config import describe
    from tuning.train import train

    if args.config_help:
        print(describe())
        return 0
    version = train(settings, args.method, args.dataset, Path(args.config) if args.config else None, progress=True)
    if version is None:  # not the main process of a multi-process launch
        return 0
    metrics = version.manifest["metrics"]
    print(f"candidate {version.id}: {metrics['steps']} steps, train loss {_fmt(metrics['train_loss'])}, "
          f"best validation loss {_fmt(metrics['best_validation_loss'])}, {_fmt(metrics['tokens_per_s'])} tokens/s")
    print(version.id)
    return 0


def cmd_models(settings: Settings, args: argparse.Namespace) -> int:
    from tuning.registry import BASE, Registry

    registry = Registry.open(settings)
    versions = [v.to_json() for v in registry.list()]
    if getattr(args, "only_undecided", False):
        versions = [v for v in versions if v["state"] in ("candidate", "gated-passed", "gated-failed")]
    active = registry.active_id()
    if args.json:
        print(json.dumps({"active": active or BASE, "versions": versions}))
        return 0
    print(f"{'base model':40} {'active' if active is None else 'base':12}")
    for v in versions:
        m = v["metrics"]
        print(f"{v['id']:40} {v['state']:12} train loss {_fmt(m.get('train_loss')):>7}  "
              f"val loss {_fmt(m.get('best_validation_loss')):>7}  {_fmt(m.get('tokens_per_s')):>6} tok/s  "
              f"data {','.join(v['datasets'])}" + ("  trained on erased data" if v["trained_on_erased_data"] else ""))
    return 0


def cmd_gate(settings: Settings, args: argparse.Namespace) -> int:
    from affinage.gating import run_gates

    report = run_gates(settings, args.id, progress=not args.json)
    if args.json:
        print(json.dumps({k: report[k] for k in ("candidate", "passed", "gates", "checks")}))
        return 0 if report["passed"] else 3
    for check in report["checks"]:
        before = "" if check["before"] is None else f"{check['before']:.4g} -> "
        name = check["name"] + (f" ({check['view']})" if check.get("view") else "")
        print(f"{'pass' if check['passed'] else 'FAIL'}  {check['gate']:10} {name:52} {before}{check['after']:.4g}"
              f"  ({check['rule']})")
    verdict = "PASSED every gate" if report["passed"] else "FAILED " + ", ".join(
        g for g, ok in report["gates"].items() if not ok)
    print(f"{args.id}: {verdict}; report: {settings.registry_dir / 'versions' / args.id / 'report.html'}")
    return 0 if report["passed"] else 3


def cmd_decide(settings: Settings, args: argparse.Namespace) -> int:
    from tuning.registry import Registry

    version = Registry.open(settings).decide(args.id, args.command == "approve", actor=f"cli:{getpass.getuser()}",
                                                     comment=args.comment, override_reason=args.override_reason)
    print(f"{version.id} is {version.state}")
    return 0


def cmd_promote(settings: Settings, args: argparse.Namespace) -> int:
    from tuning import canary
    from tuning.registry import Registry

    registry = Registry.open(settings)
    if args.canary is not None:
        started = canary.start(registry, args.id, args.canary, actor=f"cli:{getpass.getuser()}")
        print(f"{args.id} now serves {started['share']}% of new conversations as a canary; `affinage canary status` "
              "compares it with the active version")
        return 0
    version = registry.promote(args.id, actor=f"cli:{getpass.getuser()}")
    print(f"{version.id} is now active; running services switch to it within {settings.registry_poll_seconds:g} s")
    return 0


def cmd_rollback(settings: Settings, args: argparse.Namespace) -> int:
    from tuning.registry import BASE, Registry

    previous = Registry.open(settings).rollback(actor=f"cli:{getpass.getuser()}")
    print(f"rolled back: {previous or BASE} is active again")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="fine-tune a candidate version from a dataset; prints its id on the last line")
    p.add_argument("--method", choices=METHODS, default="sft")
    p.add_argument("--dataset", help="dataset id (default: the newest)")
    p.add_argument("--config", help="TOML or JSON run config (see --config-help)")
    p.add_argument("--config-help", action="store_true", help="list every run config key with its default and exit")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("models", help="list model versions with their state and metrics")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("candidates", help="list versions waiting for gates or a decision (models, filtered)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models, only_undecided=True)

    p = sub.add_parser("gate", help="run the regression, forgetting and safety gates on a candidate; writes its report")
    p.add_argument("id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_gate)

    for name, verb in (("approve", "approve a version that passed its gates"), ("reject", "reject a gated version")):
        p = sub.add_parser(name, help=verb)
        p.add_argument("id")
        p.add_argument("--comment", required=True, help="why (kept in the audit log)")
        if name == "approve":
            p.add_argument("--override-reason", help="approve despite failed gates (admins); kept in the audit log")
        p.set_defaults(func=cmd_decide, override_reason=None)

    p = sub.add_parser("promote", help="make a version that passed its gates the active one (or, with --canary, an "
                       "approved one serve a share of new conversations first)")
    p.add_argument("id")
    p.add_argument("--canary", type=int, metavar="PERCENT", help="start a canary at this share of conversations "
                   "(1-99); the worker compares it live and advances or rolls it back")
    p.set_defaults(func=cmd_promote)

    p = sub.add_parser("rollback", help="serve the previously active version again")
    p.set_defaults(func=cmd_rollback)
