"""The `affinage` command: argument parsing only; each command is a thin call into the packages.

The commands live in one module per reader's task (knowledge, service, loop, models, canary, forget). Each imports the
packages it calls inside its function, so that `affinage --help` and a refused argument answer at once, without
loading torch, transformers or the embedder.
"""

from __future__ import annotations

import argparse
import os
import sys

from pydantic import ValidationError

from affinage.cli import canary, forget, knowledge, loop, models, service
from affinage.core.settings import load_settings
from affinage.workspace import secure_workspace


def _quiet_libraries() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # models ship in packages: never reach a hub
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import warnings

    warnings.filterwarnings("ignore")
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="affinage", description="A support assistant that gets better from its own failures.")
    parser.add_argument("--home", help="workspace folder (default: $AFFINAGE_HOME or ./.affinage)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in (knowledge, service, loop, models, canary, forget):
        group.add_commands(sub)
    return parser


def _one_line(error: BaseException) -> str:
    if isinstance(error, ValidationError):
        parts = [f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in error.errors()]
        return "invalid setting " + "; ".join(parts)
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "examples" and args.action == "import" and not args.file:
        print("affinage: error: examples import needs a FILE", file=sys.stderr)
        return 2
    if args.command == "corrections" and args.action != "list" and not args.id:
        print(f"affinage: error: corrections {args.action} needs an ID", file=sys.stderr)
        return 2
    umask = None
    try:
        settings = load_settings(args.home)
        # Private before any work: every file written from here on (ours, SQLite's, FAISS's, torch's) is 0600.
        # The demo without --home makes its own temporary workspace: never create ./.affinage for it.
        umask = secure_workspace(None if args.command == "demo" and args.home is None else settings.home)
        _quiet_libraries()
        return args.func(settings, args)
    except (ValueError, OSError) as error:  # bad input: one line, non-zero exit; bugs keep their traceback
        print(f"affinage: error: {_one_line(error)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        if umask is not None:  # for in-process callers (tests); a real command exits here anyway
            os.umask(umask)
