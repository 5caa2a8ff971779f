"""The `affinage` command: argument parsing only; each command is a thin call into the packages."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from pathlib import Path

from pydantic import ValidationError

from affinage.core.settings import Settings, load_settings
from affinage.workspace import secure_workspace
from tuning.config import METHODS


def _quiet_libraries() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # models ship in packages: never reach a hub
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import warnings

    warnings.filterwarnings("ignore")
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def cmd_ingest(settings: Settings, args: argparse.Namespace) -> int:
    from retrieval.embeddings import SentenceEmbeddings
    from retrieval.index import ingest

    paths = [Path(p) for p in args.paths]
    for path in paths:  # fail before loading the embedder
        if not path.exists():
            raise FileNotFoundError(f"no such file or folder: {path}")
    report = ingest(settings.index_dir, paths, SentenceEmbeddings(settings.embedder), settings.chunk_chars,
                    settings.chunk_overlap_chars, progress=not args.json)
    if args.json:
        print(json.dumps(report.to_dict()))
    else:
        for label, items in (("added", report.added), ("updated", report.updated), ("removed", report.removed)):
            for item in items:
                print(f"{label:9} {item}")
        for item, reason in report.skipped:
            print(f"skipped   {item} ({reason})")
        for item, reason in report.failed:
            print(f"failed    {item} ({reason})", file=sys.stderr)
        print(f"{len(report.added)} added, {len(report.updated)} updated, {len(report.removed)} removed, "
              f"{len(report.unchanged)} unchanged, {len(report.skipped)} skipped, {len(report.failed)} failed; "
              f"{report.chunks} chunks in the index ({report.embedded} embedded now)")
    return 1 if report.failed else 0


def cmd_ask(settings: Settings, args: argparse.Namespace) -> int:
    from affinage.factory import build_agent
    from agent.pipeline import validate_question

    validate_question(args.question)
    answer = build_agent(settings).ask(args.question, channel="cli")
    if args.json:
        print(json.dumps(answer.to_json(), ensure_ascii=False))
    else:
        print(answer.answer)
        for citation in answer.citations:
            print(f"  source: {citation['source']} (score {citation['score']:.2f})")
    return 0


def cmd_eval(settings: Settings, args: argparse.Namespace) -> int:
    from agent.evaluation import read_eval_set, run_eval, score, write_results
    from affinage.factory import build_agent

    items = read_eval_set(Path(args.file))
    results = run_eval(build_agent(settings), items, progress=True)
    write_results(Path(args.out), results)
    summary = score(results)
    if args.json:
        print(json.dumps(summary))
    else:
        for key, value in summary.items():
            print(f"{key:16} {'n/a' if value is None else round(value, 4)}")
    return 0


def cmd_examples(settings: Settings, args: argparse.Namespace) -> int:
    from agent.example_bank import ExampleBank
    from affinage.core.store import Store

    store = Store(settings.db_url)
    if args.action == "import":
        path = Path(args.file)
        if not path.is_file():
            raise FileNotFoundError(f"no such file: {path}")
        added = ExampleBank(store, embeddings=None).import_jsonl(path, added_by="cli")
        print(f"{added} examples added")
        return 0
    examples = ExampleBank(store, embeddings=None).all()
    if args.json:
        print(json.dumps([{"id": e.id, "question": e.question, "answer": e.answer, "source": e.source,
                           "origin": e.origin} for e in examples]))
    else:
        for e in examples:
            print(f"{e.id}  [{e.origin}] {e.question}")
    return 0


def cmd_chat(settings: Settings, args: argparse.Namespace) -> int:
    from langchain_core.messages import AIMessage, HumanMessage

    from affinage.factory import build_agent

    agent = build_agent(settings)
    history = []
    print(f"affinage chat on {agent.model_version}: ask a support question, empty line or Ctrl-D to quit.")
    while True:
        try:
            question = input("\nyou> ").strip()
        except EOFError:
            break
        if not question:
            break
        print("assistant> ", end="", flush=True)
        for piece in agent.stream(question, history, channel="cli"):
            if isinstance(piece, str):
                print(piece, end="", flush=True)
            else:
                print()
                for citation in piece.citations[:3]:
                    print(f"  source: {citation['source']} (score {citation['score']:.2f})")
                history += [HumanMessage(question), AIMessage(piece.answer)]
    return 0


DEMO_KEYS = (("demo-agent", "agent"), ("demo-operator", "operator"), ("demo-admin", "admin"))


def _limit_malloc_arenas(arenas: int = 2) -> None:
    """glibc gives each request thread its own malloc arena; capping them keeps the server's memory flat."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").mallopt(-8, arenas)  # -8 is M_ARENA_MAX
    except OSError:  # not glibc: nothing to tune
        pass


# uvicorn's own limits: an idle keep-alive connection closes after KEEP_ALIVE_SECONDS (nginx's upstream
# keepalive_timeout stays below it) and headers still incomplete past MAX_HEADER_BYTES get 400. uvicorn has no timeout
# for headers or a body that arrive slower than promised (its keep-alive timer stops at the first byte of a
# request): a reverse proxy bounds those (docs/deployment.md, "Slow clients").
KEEP_ALIVE_SECONDS = 5
MAX_HEADER_BYTES = 16 * 1024  # h11's own default, stated: a request line and headers buffered while incomplete


def server_config(app, settings: Settings, host: str, port: int):
    """The uvicorn Config `affinage serve` runs; h11 is pinned because uvicorn applies the header limit to h11 only."""
    import uvicorn

    return uvicorn.Config(
        app, host=host, port=port, http="h11", log_level="warning", access_log=False,
        timeout_keep_alive=KEEP_ALIVE_SECONDS, h11_max_incomplete_event_size=MAX_HEADER_BYTES,
        limit_concurrency=settings.max_connections, timeout_graceful_shutdown=settings.shutdown_grace_seconds)


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    from agent.service import auth
    from agent.service.app import create_app
    from agent.service.observability import configure_logging

    configure_logging()
    _limit_malloc_arenas()
    app = create_app(settings)
    url = f"http://{args.host}:{args.port}/"
    print(f"affinage is serving {app.state.agent.model_version} at {url}")
    print(f"  web chat: {url}   OpenAI-compatible API: {url}v1")
    if args.demo_keys:
        store = app.state.agent.store
        existing = {row.name for row in auth.list_keys(store)}
        for name, role in DEMO_KEYS:
            if name in existing:
                auth.revoke_key(store, name)
            print(f"  {role:8} key ({name}): {auth.create_key(store, name, role)}")
    sys.stdout.flush()
    server = uvicorn.Server(server_config(app, settings, args.host, args.port))
    server.run()
    return 0 if server.started else 1  # a lifespan that failed to start: uvicorn has logged why


def cmd_keys(settings: Settings, args: argparse.Namespace) -> int:
    from agent.service import auth
    from affinage.core.store import Store

    store = Store(settings.db_url)
    if args.action == "create":
        key, row = auth.issue_key(store, args.name, args.role)  # the name stripped of surrounding whitespace
        print(f"Created {row.role} key {row.name!r}. It is shown only this once; store it now:")
        print(key)
    elif args.action == "revoke":
        auth.revoke_key(store, args.name)
        print(f"Revoked key {args.name!r}")
    else:
        rows = auth.list_keys(store)
        if args.json:
            print(json.dumps([auth.key_info(r) for r in rows]))
        for row in [] if args.json else rows:
            print(f"{row.name:24} {row.role:9} {row.prefix}…  created {row.created_at:%Y-%m-%d %H:%M}")
    return 0


def cmd_corrections(settings: Settings, args: argparse.Namespace) -> int:
    from agent.corrections import correction_info, pending_corrections, review_correction
    from affinage.core.store import Store

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
    return 0


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


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


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
    from tuning.gates import run_gates

    report = run_gates(settings, args.id, progress=not args.json)
    if args.json:
        print(json.dumps({k: report[k] for k in ("candidate", "passed", "gates", "checks")}))
        return 0 if report["passed"] else 3
    for check in report["checks"]:
        before = "" if check["before"] is None else f"{check['before']:.4g} -> "
        print(f"{'pass' if check['passed'] else 'FAIL'}  {check['gate']:10} {check['name']:40} {before}{check['after']:.4g}"
              f"  ({check['rule']})")
    verdict = "PASSED every gate" if report["passed"] else "FAILED " + ", ".join(
        g for g, ok in report["gates"].items() if not ok)
    print(f"{args.id}: {verdict}; report: {settings.registry_dir / 'versions' / args.id / 'report.html'}")
    return 0 if report["passed"] else 3


def cmd_drift(settings: Settings, args: argparse.Namespace) -> int:
    from affinage.core.store import Store
    from retrieval.embeddings import SentenceEmbeddings
    from tuning.gates import traffic_drift

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


def cmd_decide(settings: Settings, args: argparse.Namespace) -> int:
    from tuning.registry import Registry

    version = Registry.open(settings).decide(args.id, args.command == "approve", actor=f"cli:{getpass.getuser()}",
                                                     comment=args.comment, override_reason=args.override_reason)
    print(f"{version.id} is {version.state}")
    return 0


def cmd_promote(settings: Settings, args: argparse.Namespace) -> int:
    from tuning.registry import Registry

    version = Registry.open(settings).promote(args.id, actor=f"cli:{getpass.getuser()}")
    print(f"{version.id} is now active; running services switch to it within {settings.registry_poll_seconds:g} s")
    return 0


def cmd_rollback(settings: Settings, args: argparse.Namespace) -> int:
    from tuning.registry import BASE, Registry

    previous = Registry.open(settings).rollback(actor=f"cli:{getpass.getuser()}")
    print(f"rolled back: {previous or BASE} is active again")
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


def cmd_db(settings: Settings, args: argparse.Namespace) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from affinage.core import migrations
    from affinage.core.database import make_engine

    try:
        engine = make_engine(settings.db_url)
        if args.action == "upgrade":
            before, after = migrations.upgrade(engine)
        else:
            with engine.connect() as connection:
                before = after = migrations.current(connection)
        engine.dispose()
    except SQLAlchemyError as error:  # an unreachable server or a bad URL: one line, without the password
        raise ValueError(f"database: {getattr(error, 'orig', None) or error}") from error
    head = migrations.head()
    if not migrations.known(after):
        raise ValueError(f"the database is at schema revision {after}, newer than this affinage knows (its newest is "
                         f"{head}): use the release that migrated it")
    if before != after:
        print(f"upgraded {before or 'empty'} -> {after}")
    elif after == head:
        print(f"{after} (head)")
    else:
        print(f"{after or 'none'} (head is {head}: run `affinage db upgrade`, or any command that opens the database)")
    return 0


def cmd_forget(settings: Settings, args: argparse.Namespace) -> int:
    from affinage.erasure import KINDS, Selector, SelectorError, check, forget, reapply
    from affinage.core.store import Store

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


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    import tempfile

    from affinage.demo_run import TRAFFIC, render, run_demo

    if args.home is None:  # never the default ./.affinage: the demo writes a whole workspace
        settings = load_settings(tempfile.mkdtemp(prefix="affinage-demo-"))
    result = run_demo(settings, Path(args.traffic) if args.traffic else TRAFFIC, progress=not args.json)
    print(json.dumps(result, ensure_ascii=False) if args.json else render(result))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="affinage", description="A support assistant that gets better from its own failures.")
    parser.add_argument("--home", help="workspace folder (default: $AFFINAGE_HOME or ./.affinage)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("ingest", help="add or update documents in the knowledge base index")
    p.add_argument("paths", nargs="+", metavar="PATH", help="files or folders (.md .txt .html .pdf)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("ask", help="answer one question with citations")
    p.add_argument("question")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_ask)

    p = sub.add_parser("eval", help="answer a JSONL question set and score it")
    p.add_argument("file", help="JSONL lines with question, answer and optional source, key_fact")
    p.add_argument("--out", required=True, help="JSONL file for the per-question results")
    p.add_argument("--json", action="store_true", help="print the aggregate metrics as one JSON object")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("examples", help="the few-shot example bank")
    p.add_argument("action", choices=["import", "list"])
    p.add_argument("file", nargs="?", help="JSONL of {question, answer, source} (for import)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_examples)

    p = sub.add_parser("chat", help="chat in the terminal")
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("serve", help="start the HTTP service: web chat and OpenAI-compatible API")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--demo-keys", action="store_true", help="(re)create demo-agent/-operator/-admin keys and print them")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("failures", help="group recent failures into topics, each with a suggested remedy")
    p.add_argument("--days", type=float, default=30, help="look back this many days (default 30)")
    p.add_argument("--threshold", type=float, default=0.6, help="cosine similarity that joins questions into a topic")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_failures)

    p = sub.add_parser("synth", help="build a training dataset from failures not used before")
    p.add_argument("--paraphrases", type=int, help="paraphrases per failed question (default: setting paraphrases)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("datasets", help="list datasets with their counts and lineage")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_datasets)

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

    p = sub.add_parser("drift", help="input drift of recent questions by topic, and training data gone stale")
    p.add_argument("--days", type=float, default=7, help="the recent window (default 7 days)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_drift)

    for name, verb in (("approve", "approve a version that passed its gates"), ("reject", "reject a gated version")):
        p = sub.add_parser(name, help=verb)
        p.add_argument("id")
        p.add_argument("--comment", required=True, help="why (kept in the audit log)")
        if name == "approve":
            p.add_argument("--override-reason", help="approve despite failed gates (admins); kept in the audit log")
        p.set_defaults(func=cmd_decide, override_reason=None)

    p = sub.add_parser("worker", help="run the improvement loop in the background: triggers, durable jobs, gates")
    p.add_argument("--once", action="store_true", help="check the triggers, run at most one job, exit (cron, tests)")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("promote", help="make a version that passed its gates the active one")
    p.add_argument("id")
    p.set_defaults(func=cmd_promote)

    p = sub.add_parser("rollback", help="serve the previously active version again")
    p.set_defaults(func=cmd_rollback)

    p = sub.add_parser("corrections", help="review submitted corrections (approved ones join the example bank)")
    p.add_argument("action", nargs="?", default="list", choices=["list", "approve", "reject"])
    p.add_argument("id", nargs="?", help="the correction (feedback) id, for approve and reject")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_corrections)

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

    p = sub.add_parser("demo", help="replay support traffic on the demo knowledge base, run one improvement cycle, "
                                     "promote, and print before/after figures (a fresh workspace)")
    p.add_argument("--home", default=argparse.SUPPRESS, help="a new workspace folder (default: a new temporary one)")
    p.add_argument("--traffic", help="JSONL of question, answer, key_fact, paraphrases (default: the bundled one)")
    p.add_argument("--json", action="store_true", help="print every figure as one JSON object")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("db", help="the database schema: its revision, or bring it to the newest (Alembic)")
    p.add_argument("action", choices=["current", "upgrade"])
    p.set_defaults(func=cmd_db)

    p = sub.add_parser("keys", help="manage API keys")
    keys = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    k = keys.add_parser("create", help="create a key and print it once, alone on the last line")
    k.add_argument("--role", required=True, choices=["agent", "operator", "admin"])
    k.add_argument("--name", required=True)
    k = keys.add_parser("list", help="list keys (names, roles, prefixes; never the keys)")
    k.add_argument("--json", action="store_true")
    k = keys.add_parser("revoke", help="revoke a key by name")
    k.add_argument("name")
    p.set_defaults(func=cmd_keys)
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


if __name__ == "__main__":
    sys.exit(main())
