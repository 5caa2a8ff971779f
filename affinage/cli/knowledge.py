"""The knowledge base and answers: ingest, ask, eval, the example bank, chat in the terminal."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from affinage.core.settings import Settings


def cmd_ingest(settings: Settings, args: argparse.Namespace) -> int:
    from retrieval.embeddings import SentenceEmbeddings
    from retrieval.ingest import ingest

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
              f"{report.chunks} chunks in the index ({report.embedded} embedded now, "
              f"{report.sentences_embedded} quotable sentences)")
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
    from affinage.factory import build_agent
    from agent.evaluation import read_eval_set, run_eval, score, write_results

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
    from affinage.core.store import Store
    from agent.example_bank import ExampleBank

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


def add_commands(sub: argparse._SubParsersAction) -> None:
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
