"""`affinage eval`: answer a question set and score answers and retrieval against references."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tqdm import tqdm

from affinage.core.atomic import atomic_write_text
from affinage.core.jsonl import numbered_lines
from affinage.core.metrics import (
    contains_fact,
    hit_at_k,
    mean,
    percentile,
    rouge_l,
    token_f1,
)
from agent.pipeline import Answer, SupportAgent


def read_eval_set(path: Path) -> list[dict]:
    """Lines of {question, answer, source?, key_fact?}; a bad line is named by number."""
    items = []
    for number, item in numbered_lines(path):
        if not isinstance(item, dict):
            raise ValueError(f"{path}:{number}: expected a JSON object")
        for key in ("question", "answer"):
            if not isinstance(item.get(key), str) or not item[key].strip():
                raise ValueError(f"{path}:{number}: '{key}' must be a non-empty string")
        for key in ("source", "key_fact"):
            if item.get(key) is not None and not isinstance(item[key], str):
                raise ValueError(f"{path}:{number}: '{key}' must be a string or null")
        items.append(item)
    if not items:
        raise ValueError(f"{path}: no questions")
    return items


def score(results: list[dict]) -> dict:
    """Aggregate metrics over per-question results (pure); ``p95_ttft_s`` is None when no row has ``ttft_s``."""
    with_source = [r for r in results if r.get("source")]
    with_fact = [r for r in results if r.get("key_fact")]
    latencies = [r["latency_s"] for r in results]
    ttfts = [r["ttft_s"] for r in results if r.get("ttft_s") is not None]
    summary = {"n": len(results)}
    for k in (1, 3, 5):
        hits = [hit_at_k([c["source"] for c in r["citations"]], r["source"], k) for r in with_source]
        summary[f"hit@{k}"] = mean([float(h) for h in hits]) if hits else None
    summary["token_f1"] = mean([token_f1(r["answer"], r["reference"]) for r in results])
    summary["rouge_l"] = mean([rouge_l(r["answer"], r["reference"]) for r in results])
    summary["key_fact_recall"] = mean([float(contains_fact(r["answer"], r["key_fact"])) for r in with_fact]) if with_fact else None
    summary["mean_latency_s"] = mean(latencies)
    summary["p95_latency_s"] = percentile(latencies, 95)
    summary["p95_ttft_s"] = percentile(ttfts, 95) if ttfts else None
    return summary


def ask_streaming(agent: SupportAgent, question: str) -> tuple[Answer, float]:
    """The finished answer and its time to first text: from the call to the first non-empty piece ``stream`` yields
    (the whole answer's time when none came, e.g. an empty answer)."""
    started = time.perf_counter()
    ttft = None
    answer = None
    for piece in agent.stream(question, log=False):
        if isinstance(piece, str):
            if ttft is None and piece.strip():
                ttft = time.perf_counter() - started
        else:
            answer = piece
    return answer, ttft if ttft is not None else time.perf_counter() - started


def run_eval(agent: SupportAgent, items: list[dict], progress: bool = True) -> list[dict]:
    results = []
    for item in tqdm(items, desc="eval", unit="q", disable=not progress):
        answer, ttft = ask_streaming(agent, item["question"])
        results.append({
            "question": item["question"],
            "reference": item["answer"],
            "answer": answer.answer,
            "generated": answer.generated,
            "citations": answer.citations,
            "latency_s": round(answer.latency_s, 4),
            "ttft_s": round(ttft, 4),
            "source": item.get("source"),
            "key_fact": item.get("key_fact"),
        })
    return results


def write_results(path: Path, results: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in results))
