"""Training rows from a synth_data dataset: found, hash-checked, schema-checked and split before any model loads."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from affinage.core.datasets import list_datasets, superseded, superseded_message, verify_dataset

FILE_FOR = {"sft": "sft", "partial": "sft", "full": "sft", "qlora": "sft", "dpo": "preference", "kto": "kto"}
MIN_ROWS_FOR_VALIDATION = 4


@dataclass
class TrainingData:
    manifest: dict
    train: list[dict]
    validation: list[dict]


def find_dataset(root: Path, dataset_id: str | None) -> Path:
    """The folder of ``dataset_id``, or of the newest dataset when none is named; one an erasure superseded is
    refused, naming the dataset that replaced it."""
    manifests = list_datasets(root)
    if dataset_id is None:
        if not manifests:
            raise ValueError(f"there is no dataset in {root} yet: build one with `affinage synth`")
        dataset_id = manifests[-1]["id"]
    folder = root / dataset_id
    if "/" in dataset_id or not (folder / "manifest.json").is_file():
        known = ", ".join(m["id"] for m in manifests[-5:]) or "none"
        raise ValueError(f"dataset {dataset_id!r} does not exist (newest: {known})")
    manifest = json.loads((folder / "manifest.json").read_text())
    if superseded(manifest):
        raise ValueError(superseded_message(manifest))
    return folder


def load_training_data(root: Path, dataset_id: str | None, method: str, base_model: str,
                       val_fraction: float, seed: int) -> TrainingData:
    folder = find_dataset(root, dataset_id)
    manifest = verify_dataset(folder)
    if manifest.get("base_model", "").split("@")[0] != base_model:
        raise ValueError(f"dataset {manifest['id']} was built for base model {manifest.get('base_model')!r}, "
                         f"but training would start from {base_model!r}")
    name = FILE_FOR[method] + ".jsonl"
    rows = []
    for number, line in enumerate((folder / name).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"dataset {manifest['id']}: {name} line {number} is not valid JSON ({error.msg})") from None
        problem = row_problem(FILE_FOR[method], row)
        if problem:
            raise ValueError(f"dataset {manifest['id']}: {name} line {number}: {problem}")
        rows.append(to_trl(FILE_FOR[method], row))
    if not rows:
        raise ValueError(f"dataset {manifest['id']} has no {FILE_FOR[method]} rows, which method {method} trains on")
    if method == "kto" and len({row["label"] for row in rows}) < 2:
        raise ValueError(f"dataset {manifest['id']}: kto needs both desirable and undesirable examples "
                         f"(all {len(rows)} rows are labelled {rows[0]['label']})")
    train, validation = split(rows, val_fraction, seed)
    return TrainingData(manifest, train, validation)


def row_problem(kind: str, row: object) -> str | None:
    """What is wrong with one row, or None."""
    if not isinstance(row, dict):
        return "a row must be a JSON object"
    if kind == "sft":
        messages = row.get("messages")
        if not _is_chat(messages) or len(messages) < 2:
            return "'messages' must be a list of at least two {role, content} messages"
        if messages[-1]["role"] != "assistant" or not messages[-1]["content"].strip():
            return "the last message must be a non-empty assistant answer"
        return None
    if not _is_chat(row.get("prompt")) or not row["prompt"]:
        return "'prompt' must be a non-empty list of {role, content} messages"
    answers = ("chosen", "rejected") if kind == "preference" else ("completion",)
    for key in answers:
        if not _is_chat(row.get(key)) or not row[key] or row[key][-1]["role"] != "assistant":
            return f"'{key}' must be a list ending with an assistant message"
    if kind == "kto" and not isinstance(row.get("label"), bool):
        return "'label' must be true (desirable) or false (undesirable)"
    return None


def _is_chat(value: object) -> bool:
    return isinstance(value, list) and all(
        isinstance(m, dict) and m.get("role") in ("system", "user", "assistant") and isinstance(m.get("content"), str)
        for m in value)


def to_trl(kind: str, row: dict) -> dict:
    """TRL's conversational formats; SFT becomes prompt/completion so the loss covers the answer only."""
    if kind == "sft":
        return {"prompt": row["messages"][:-1], "completion": row["messages"][-1:]}
    if kind == "preference":
        return {"prompt": row["prompt"], "chosen": row["chosen"], "rejected": row["rejected"]}
    return {"prompt": row["prompt"], "completion": row["completion"], "label": row["label"]}


def split(rows: list[dict], val_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """A seeded hold-out of whole answer groups: paraphrases of one question never straddle the split.

    Too few rows to spare any means no validation (and so no early stopping).
    """
    if val_fraction <= 0 or len(rows) < MIN_ROWS_FOR_VALIDATION:
        return rows, []
    groups: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(json.dumps(row.get("completion") or row.get("chosen"), sort_keys=True), []).append(i)
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    wanted, held = max(1, round(len(rows) * val_fraction)), set()
    for key in keys[:-1]:  # at least one group trains
        if len(held) >= wanted:
            break
        held.update(groups[key])
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]
