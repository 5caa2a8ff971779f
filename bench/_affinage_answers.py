#!/usr/bin/env python
"""Answer question sets with affinage's agent, streaming, and write one JSON line per question (for rag_faq.py).

    python bench/_affinage_answers.py [--expect-root DIR] --job HOME QUESTIONS OUT [--job ...]

Run with PYTHONPATH set to the tree whose affinage should answer: rag_faq.py runs it once on this checkout and,
with ``--baseline-ref``, once on ``git archive`` of an older commit ("today"), with the same virtualenv. It
therefore uses only what affinage had at commit 4ab7766: ``load_settings``, ``secure_workspace``,
``affinage.factory.build_agent`` (the agent ``affinage eval`` builds) and ``SupportAgent.stream(question,
log=False)``, which yields the answer's text pieces and then the finished ``Answer``; so it times the first text
itself rather than call ``agent.evaluation.ask_streaming``, which that commit does not have.

Per job (a workspace that has been ingested, a JSONL question file, an output file) the agent is built once and
answers the first question once unscored, to warm up, then every question in order. Each line: question, answer,
citations (source, score, text: the passages given to the model, the cited first), abstained, latency_s (the
answer end to end, as ``Answer.latency_s``) and ttft_s (from calling ``stream`` to its first non-empty text
piece; the whole answer's time when no text came). ``--expect-root`` makes sure that the affinage imported is the
one under DIR, so a baseline run cannot silently answer with the installed checkout.
"""

from __future__ import annotations

import os

for _name, _value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"), ("TOKENIZERS_PARALLELISM", "false")):
    os.environ.setdefault(_name, _value)

import argparse
import json
import sys
import time
from pathlib import Path


def answer_one(agent, question: str) -> dict:
    """One question through ``agent.stream``: the answer with its passages, latency and time to first text."""
    started = time.perf_counter()
    ttft = None
    final = None
    for piece in agent.stream(question, log=False):
        if isinstance(piece, str):
            if ttft is None and piece.strip():
                ttft = time.perf_counter() - started
        else:
            final = piece
    total = time.perf_counter() - started
    if final is None:
        raise RuntimeError(f"agent.stream yielded no Answer for {question!r}")
    return {
        "question": question,
        "answer": final.answer,
        "citations": [{"source": c.get("source"), "score": c.get("score"), "text": c.get("text")}
                      for c in final.citations],
        "abstained": bool(final.abstained),
        "latency_s": round(float(final.latency_s), 4),
        "ttft_s": round(ttft if ttft is not None else total, 4),
    }


def run_job(home: Path, questions: Path, out: Path) -> None:
    from affinage.core.settings import load_settings
    from affinage.factory import build_agent
    from affinage.workspace import secure_workspace

    settings = load_settings(home)
    secure_workspace(settings.home)
    items = [json.loads(line) for line in questions.read_text(encoding="utf-8").splitlines() if line.strip()]
    agent = build_agent(settings)
    answer_one(agent, items[0]["question"])  # warm-up, unscored: first-call costs are not an answer's latency
    with out.open("w", encoding="utf-8") as handle:
        for i, item in enumerate(items, 1):
            row = answer_one(agent, item["question"])
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            handle.flush()
            print(f"[affinage answers] {home.name}: {i}/{len(items)} ttft {row['ttft_s']:.2f}s "
                  f"latency {row['latency_s']:.2f}s", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--job", nargs=3, action="append", required=True, metavar=("HOME", "QUESTIONS", "OUT"),
                        help="an ingested workspace, a JSONL question file and the JSONL file to write")
    parser.add_argument("--expect-root", default=None,
                        help="fail unless the affinage package imported lies under this folder")
    args = parser.parse_args(argv)

    import warnings

    warnings.filterwarnings("ignore")
    import affinage

    where = Path(affinage.__file__).resolve()
    if args.expect_root and not where.is_relative_to(Path(args.expect_root).resolve()):
        raise SystemExit(f"_affinage_answers: affinage was imported from {where}, not from under {args.expect_root}; "
                         "set PYTHONPATH to that tree")
    print(f"[affinage answers] affinage from {where.parent}", file=sys.stderr, flush=True)
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    for home, questions, out in args.job:
        run_job(Path(home), Path(questions), Path(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
