"""A staged rollout: `affinage canary status|advance|stop|rollback|check` (started by `affinage promote ID --canary N`)."""

from __future__ import annotations

import argparse
import getpass
import json

from affinage.core.settings import Settings


def _who() -> str:
    return f"cli:{getpass.getuser()}"


def _rate(figures: dict, arm: str) -> str:
    return f"{figures[arm + '_bad']}/{figures[arm + '_conversations']}"


def print_status(found: dict) -> None:
    canary, decision = found["canary"], found["decision"]
    if canary is None:
        last = found["last"]
        said = f"; last: {last['action']} of {last['version']} by {last['actor']} at {last['at']}" if last else ""
        print(f"no canary running; {found['active']} serves every conversation{said}")
        return
    print(f"canary {canary['version']} serves {canary['share']}% of new conversations (since {canary['started_at']}, "
          f"by {canary['actor']}); the rest: {found['active']}")
    for name, f in decision["signals"].items():
        print(f"  {name:22} active {_rate(f, 'active'):>9}  canary {_rate(f, 'canary'):>9}  "
              f"difference {f['diff']:+.3f} in [{f['low']:+.3f}, {f['high']:+.3f}]")
    print(f"decision: {decision['action']}: {decision['reason']}")


def cmd_canary(settings: Settings, args: argparse.Namespace) -> int:
    from affinage import canary
    from affinage.core.store import shared_store
    from tuning import canary as moves
    from tuning.registry import Registry

    store = shared_store(settings.db_url)
    registry = Registry.open(settings, store)
    if args.action == "advance":
        canary.advance(settings, registry, args.share, _who())
    elif args.action == "stop":
        moves.stop(registry, _who(), args.comment)
    elif args.action == "rollback":
        moves.roll_back(registry, _who(), args.comment)
    elif args.action == "check":
        canary.check(settings, store, registry)
    found = canary.status(settings, store, registry)
    if args.json:
        print(json.dumps(found))
    else:
        print_status(found)
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("canary", help="a version serving a share of conversations first: status, advance, stop, "
                       "rollback, or check (one look by the worker's policy)")
    p.add_argument("action", choices=("status", "advance", "stop", "rollback", "check"))
    p.add_argument("--share", type=int, help="advance: the new share in percent (default: the next step; 100 makes "
                   "the version active)")
    p.add_argument("--comment", help="stop, rollback: why (kept in the audit log)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_canary)
