"""Scoring a PII redactor against a labelled corpus: recall on texts that hold PII, precision on near-misses.

One function for ``bench/pii_recall.py`` (which writes the figures) and the tests (which hold ``redact_pii`` to
them), so both judge the same way. A record is ``{"id", "label": "positive" | "negative", "kind", "form", "text",
"spans": [{"start", "end", "kind", "text"}]}``; a negative has no spans.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from affinage.core.pii import redact_pii

PLACEHOLDER = r"\[[A-Z]+\]"


def load_corpus(path: Path) -> list[dict[str, Any]]:
    """The records of a JSONL corpus, each checked (``check_record``)."""
    records = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    for record in records:
        check_record(record)
    return records


def check_record(record: Mapping[str, Any]) -> None:
    """Refuse a record whose label, spans or offsets disagree with its text: a wrong label scores the wrong thing."""
    name = record.get("id", record.get("text"))
    label, spans, text = record.get("label"), record.get("spans", []), record.get("text")
    if label not in ("positive", "negative") or not isinstance(text, str):
        raise ValueError(f"record {name!r} needs a text and a label 'positive' or 'negative', got label {label!r}")
    if (label == "positive") != bool(spans):
        raise ValueError(f"record {name!r}: a positive needs spans and a negative has none, got {len(spans)}")
    end = 0
    for span in sorted(spans, key=lambda s: s["start"]):
        if span["start"] < end or text[span["start"]:span["end"]] != span["text"] or not span["text"]:
            raise ValueError(f"record {name!r}: span {span!r} overlaps another or is not the text at its offsets")
        end = span["end"]


def judge(record: Mapping[str, Any], redacted: str) -> dict[str, bool]:
    """For a positive: ``caught`` when no labelled span is left in the redacted text, ``exact`` when the output
    is the text with each span (and nothing else) replaced by a placeholder. For a negative: ``unchanged``."""
    text = record["text"]
    if record["label"] == "negative":
        return {"unchanged": redacted == text}
    spans = sorted(record["spans"], key=lambda s: s["start"])
    caught = all(span["text"] not in redacted for span in spans)
    pattern, done = [], 0
    for span in spans:
        pattern += [re.escape(text[done:span["start"]]), PLACEHOLDER]
        done = span["end"]
    pattern.append(re.escape(text[done:]))
    return {"caught": caught, "exact": re.fullmatch("".join(pattern), redacted) is not None}


def _rate(hits: int, total: int) -> float | None:
    return hits / total if total else None


def _tally(rows: list[tuple[dict, dict]]) -> dict[str, Any]:
    positives = [verdict for record, verdict in rows if record["label"] == "positive"]
    negatives = [verdict for record, verdict in rows if record["label"] == "negative"]
    caught = sum(v["caught"] for v in positives)
    exact = sum(v["exact"] for v in positives)
    unchanged = sum(v["unchanged"] for v in negatives)
    return {"positives": len(positives), "caught": caught, "exact": exact, "recall": _rate(caught, len(positives)),
            "exact_rate": _rate(exact, len(positives)), "negatives": len(negatives), "unchanged": unchanged,
            "precision": _rate(unchanged, len(negatives))}


def score(records: Iterable[Mapping[str, Any]],
          redact: Callable[[str], str] = lambda text: redact_pii(text)[0]) -> dict[str, Any]:
    """Recall (share of positives whose every span is gone), exact-span rate, and precision (share of near-miss
    negatives returned unchanged), overall, per kind and per kind/form; with the records that failed."""
    rows = []
    for record in records:
        check_record(record)
        redacted = redact(record["text"])
        rows.append((dict(record, redacted=redacted), judge(record, redacted)))
    by_kind: dict[str, list] = {}
    by_form: dict[str, list] = {}
    for row in rows:
        by_kind.setdefault(row[0]["kind"], []).append(row)
        by_form.setdefault(f"{row[0]['label']}:{row[0]['kind']}/{row[0]['form']}", []).append(row)
    failed = [(record, verdict) for record, verdict in rows
              if not verdict.get("caught", True) or not verdict.get("unchanged", True)]
    return {
        **_tally(rows),
        "kinds": {kind: _tally(kind_rows) for kind, kind_rows in sorted(by_kind.items())},
        "forms": {form: _tally(form_rows) for form, form_rows in sorted(by_form.items())},
        "misses": [{"id": r["id"], "text": r["text"], "redacted": r["redacted"]}
                   for r, v in failed if r["label"] == "positive"],
        "false_positives": [{"id": r["id"], "text": r["text"], "redacted": r["redacted"]}
                            for r, v in failed if r["label"] == "negative"],
        "inexact": [{"id": r["id"], "text": r["text"], "redacted": r["redacted"]}
                    for r, v in rows if r["label"] == "positive" and v["caught"] and not v["exact"]],
    }
