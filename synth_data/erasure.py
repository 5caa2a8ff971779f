"""The right to be forgotten, for datasets: a dataset holding rows derived from erased interactions is superseded by
a new version without them, and the old one becomes a tombstone (its manifest alone, with nothing personal in it).

Datasets stay immutable, so rows are never edited in place. The clean copy is written first (``write_dataset``,
atomic), then the old manifest is rewritten as a tombstone (atomic) and its data files are deleted. A process killed
at any point leaves the old dataset intact, or the new one beside it (a rerun adopts it by ``supersedes`` instead of
writing a second copy), or a tombstone with files left over (a rerun deletes them).

Rows are traced to their interactions by the dataset's ``lineage.json``: every row, paraphrase, pair and hardened
copy of an erased interaction goes. A dataset built before lineage existed names only the interactions it drew on,
and only its held-out rows name theirs; once one of its sources is erased no other row can be proven clean, so they
all go, and its surviving interactions return to the pool the next `affinage synth` builds from (with lineage).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from affinage.core.atomic import atomic_write_text, fsync_dir
from affinage.core.datasets import (
    KINDS,
    LINEAGE,
    list_datasets,
    superseded,
    write_dataset,
)

# What a tombstone keeps of its manifest: identity and provenance, nothing derived from a person.
TOMBSTONE_KEYS = ("id", "created_at", "written_at", "content_hash", "base_model", "teacher", "prompt_version",
                  "supersedes")
# Set by write_dataset, by the erasure, or recomputed for the new version; every other manifest key is carried over.
RECOMPUTED = ("id", "content_hash", "files", "counts", "source_interaction_ids", "contributors", "supersedes",
              "superseded_by", "erased_at", "removed", "written_at")
TRAINABLE = tuple(kind for kind in KINDS if kind != "heldout")


def strings(value) -> Iterator[str]:
    """Every string inside a JSON value (a row's messages, answers and passages)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)


def contains(row: dict, needle: str | None) -> bool:
    """``needle`` (lower case) occurs in some text of ``row``."""
    return bool(needle) and any(needle in text.lower() for text in strings(row))


def read_rows(folder: Path, kind: str) -> list[dict]:
    path = folder / f"{kind}.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def read_lineage(folder: Path) -> dict | None:
    path = folder / LINEAGE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


@dataclass
class Plan:
    """What erasing ``hit`` does to one dataset: the rows kept (indexes per kind) and why the others go."""

    manifest: dict
    rows: dict[str, list[dict]]
    keep: dict[str, list[int]]
    hit: set[str]  # interactions whose rows go: erased ones this dataset drew on, and those of rows with the text
    lineage: dict | None
    unattributable: int  # rows dropped only because, without lineage, they cannot be proven clean
    erased: set[str]  # the interactions the erasure deleted

    def removed(self) -> dict[str, int]:
        return {kind: len(self.rows[kind]) - len(self.keep[kind]) for kind in KINDS}

    def touched(self) -> bool:
        return bool(self.hit) or any(self.removed().values())

    def trainable(self) -> bool:
        """Something left to train on: a dataset of held-out rows alone is no dataset (the builder writes none)."""
        return any(self.keep[kind] for kind in TRAINABLE)

    def sources(self) -> list[str]:
        """The old dataset's interactions that the new one still stands for, so synth does not take them again (one
        that lost its rows to the text alone stays used: rebuilt, it could bring the text back); without lineage
        and with an erased source, none: their rows are gone, and they return to the pool."""
        if self.lineage is None and self.hit:
            return []
        return [i for i in self.manifest.get("source_interaction_ids", []) if i not in self.erased]

    def new_version(self, now: str) -> tuple[dict[str, list[dict]], dict, dict | None]:
        """Rows, manifest and lineage of the superseding dataset. It keeps the old ``created_at``, so datasets stay
        in the order they were built (the newest is still the one `affinage train` picks)."""
        rows = {kind: [self.rows[kind][n] for n in self.keep[kind]] for kind in KINDS}
        manifest = {k: v for k, v in self.manifest.items() if k not in RECOMPUTED}
        manifest.update(supersedes=self.manifest["id"], written_at=now, source_interaction_ids=self.sources(),
                        contributors=self.manifest.get("contributors", []))
        lineage = None
        if self.lineage is not None:
            lineage = {kind: [self.lineage[kind][n] for n in self.keep[kind]] for kind in KINDS}
            kept = {i for kind in KINDS for i in lineage[kind]}
            users = self.lineage.get("contributors")
            if users is not None:
                lineage["contributors"] = {i: users[i] for i in kept if i in users}
                manifest["contributors"] = sorted({users.get(i, "anonymous") for i in kept})
            lineage["customers"] = {i: c for i, c in self.lineage.get("customers", {}).items() if i in kept}
        return rows, manifest, lineage


def plan(folder: Path, manifest: dict, ids: set[str], needle: str | None) -> Plan:
    """Which rows of the dataset in ``folder`` derive from ``ids`` or contain ``needle``, and so go."""
    rows = {kind: read_rows(folder, kind) for kind in KINDS}
    lineage = read_lineage(folder)
    sources = set(manifest.get("source_interaction_ids", []))
    if lineage is not None:
        # a row containing the text takes its whole interaction with it: paraphrases, pairs, hardened copies
        hit = {i for kind in KINDS for n, i in enumerate(lineage[kind]) if i in ids or contains(rows[kind][n], needle)}
        hit |= sources & ids
        keep = {kind: [n for n, i in enumerate(lineage[kind]) if i not in hit] for kind in KINDS}
        return Plan(manifest, rows, keep, hit, lineage, 0, ids)
    held = rows["heldout"]
    hit = (sources & ids) | {r["interaction_id"] for r in held if r.get("interaction_id")
                             and (r["interaction_id"] in ids or contains(r, needle))}
    if not hit:  # nothing erased drew on it: only rows with the text go
        return Plan(manifest, rows, {kind: [n for n, r in enumerate(rows[kind]) if not contains(r, needle)]
                                     for kind in KINDS}, set(), None, 0, ids)
    keep = {kind: [] for kind in TRAINABLE}
    keep["heldout"] = [n for n, r in enumerate(held) if r.get("interaction_id") and r["interaction_id"] not in hit]
    unattributable = sum(not contains(r, needle) for kind in TRAINABLE for r in rows[kind])
    unattributable += sum(not r.get("interaction_id") for r in held)
    return Plan(manifest, rows, keep, hit, None, unattributable, ids)


def delete_data(folder: Path) -> bool:
    """Everything in a dataset folder but its manifest; True when something was there."""
    leftovers = [p for p in folder.iterdir() if p.name != "manifest.json"]
    for path in leftovers:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    if leftovers:
        fsync_dir(folder)
    return bool(leftovers)


def tombstone(folder: Path, manifest: dict, new_id: str | None, removed: dict[str, int], now: str) -> None:
    """Rewrite the manifest as a tombstone (atomic: from here on the dataset is refused), then delete the data."""
    stone = {k: manifest[k] for k in TOMBSTONE_KEYS if k in manifest}
    stone.update(superseded_by=new_id, erased_at=now, removed=removed)
    atomic_write_text(folder / "manifest.json", json.dumps(stone, indent=2, ensure_ascii=False))
    delete_data(folder)


def supersede_datasets(datasets_dir: Path, interaction_ids: set[str], matching: str | None) -> list[dict]:
    """Replace every dataset with rows derived from ``interaction_ids`` (or whose text contains ``matching``, case
    aside) by a version without them, and leave the old one a tombstone. Returns one record per dataset:
    ``{"old", "new" (None: every trainable row was erased), "removed": {kind: n}}``, plus ``unattributable`` (rows of
    a dataset without lineage that could not be proven clean) and ``released`` (surviving interactions no dataset
    lists any more: the next synth builds from them again) where not zero. Safe to run again after a crash."""
    ids, needle = set(interaction_ids), (matching or "").strip().lower() or None
    if not datasets_dir.is_dir():
        return []
    everything = list_datasets(datasets_dir, include_superseded=True)
    done: list[dict] = []
    for manifest in everything:
        folder = datasets_dir / manifest["id"]
        if superseded(manifest):
            delete_data(folder)  # a tombstone an interrupted erasure left with its files
            continue
        work = plan(folder, manifest, ids, needle)
        if not work.touched():
            continue
        if not work.trainable():  # held-out rows alone are no dataset: they go with the rest
            work.keep = {kind: [] for kind in KINDS}
        now = datetime.now(timezone.utc).isoformat()
        new = next((m for m in list_datasets(datasets_dir, include_superseded=True)
                    if m.get("supersedes") == manifest["id"]), None)  # written before an interruption: adopt it
        if new is None and work.trainable():
            new = write_dataset(datasets_dir, *work.new_version(now))
        tombstone(folder, manifest, new["id"] if new else None, work.removed(), now)
        record = {"old": manifest["id"], "new": new["id"] if new else None, "removed": work.removed()}
        released = len(set(manifest.get("source_interaction_ids", [])) - ids
                       - set(new.get("source_interaction_ids", []) if new else []))
        record.update({k: v for k, v in (("unattributable", work.unattributable), ("released", released)) if v})
        done.append(record)
    return done


def leftover_rows(datasets_dir: Path, interaction_ids: set[str], matching: str | None) -> dict[str, int]:
    """For `affinage forget --check`: rows still on disk, per dataset folder (half-written ones included), that
    derive from ``interaction_ids`` or contain ``matching``; rows of a dataset without lineage that drew on an erased
    interaction count too, since nothing proves them clean."""
    ids, needle = set(interaction_ids), (matching or "").strip().lower() or None
    found: dict[str, int] = {}
    for folder in sorted(datasets_dir.iterdir()) if datasets_dir.is_dir() else []:
        if not folder.is_dir():
            continue
        path = folder / "manifest.json"
        manifest = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        count = sum(plan(folder, {**manifest, "id": folder.name}, ids, needle).removed().values())
        if count:
            found[folder.name] = count
    return found


def current_dataset(datasets_dir: Path, dataset_id: str) -> str | None:
    """The dataset that holds ``dataset_id``'s rows now: itself, or the newest one that superseded it after
    erasures; None when an erasure left nothing of it. An unknown id comes back as it is, for the caller's own
    check to name."""
    seen = set()
    while dataset_id not in seen:
        seen.add(dataset_id)
        path = datasets_dir / dataset_id / "manifest.json"
        if "/" in dataset_id or not path.is_file():
            return dataset_id
        manifest = json.loads(path.read_text(encoding="utf-8"))
        if not superseded(manifest):
            return dataset_id
        if not manifest.get("superseded_by"):
            return None
        dataset_id = manifest["superseded_by"]
    raise ValueError(f"dataset {dataset_id!r}: its superseded_by chain loops")
