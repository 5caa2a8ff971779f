"""Datasets are immutable, versioned folders: JSONL files plus a manifest with hashes and lineage."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from affinage.core.atomic import fsync_dir, fsync_file

KINDS = ("sft", "preference", "kto", "heldout")  # heldout: paraphrases kept for the gates, never trained on
# {kind: [interaction id of each row, in file order], "contributors": {interaction id: user},
#  "customers": {interaction id: end customer}}
LINEAGE = "lineage.json"


def write_dataset(root: Path, rows: dict[str, list[dict]], manifest: dict, lineage: dict | None = None) -> dict:
    """Write every file to a temporary folder, then rename it into place: a dataset is whole or absent.

    ``lineage`` names the interaction each row came from (``LINEAGE``), kept beside the rows rather than in them so
    the training formats stay TRL's; an erasure needs it to find every row, paraphrase and pair of one interaction.
    """
    for kind in KINDS if lineage is not None else ():
        if len(lineage.get(kind, [])) != len(rows.get(kind, [])):
            raise ValueError(f"lineage of {kind} names {len(lineage.get(kind, []))} interactions for "
                             f"{len(rows.get(kind, []))} rows")
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
    try:
        files = {}
        for kind in KINDS:
            data = "".join(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n" for row in rows.get(kind, []))
            (tmp / f"{kind}.jsonl").write_text(data, encoding="utf-8")
            files[f"{kind}.jsonl"] = hashlib.sha256(data.encode("utf-8")).hexdigest()
        if lineage is not None:
            data = json.dumps({**{kind: list(lineage.get(kind, [])) for kind in KINDS},
                               **{key: dict(lineage.get(key, {})) for key in ("contributors", "customers")}},
                              ensure_ascii=False, sort_keys=True)
            (tmp / LINEAGE).write_text(data, encoding="utf-8")
            files[LINEAGE] = hashlib.sha256(data.encode("utf-8")).hexdigest()
        content_hash = hashlib.sha256("".join(f"{n}:{h}\n" for n, h in sorted(files.items())).encode()).hexdigest()
        created = datetime.now(timezone.utc)
        manifest = {
            "id": f"ds-{created:%Y%m%d-%H%M%S}-{content_hash[:8]}",
            "created_at": created.isoformat(),
            "content_hash": content_hash,
            "files": files,
            "counts": {kind: len(rows.get(kind, [])) for kind in KINDS},
            **manifest,
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False), encoding="utf-8")
        for path in tmp.iterdir():
            fsync_file(path)
        fsync_dir(tmp)
        os.rename(tmp, root / manifest["id"])
        fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def superseded(manifest: dict) -> bool:
    """A tombstone: an erasure deleted this dataset's rows (``erased_at``) and left only its manifest."""
    return "erased_at" in manifest


def superseded_message(manifest: dict) -> str:
    if manifest.get("superseded_by"):
        return (f"dataset {manifest['id']} was superseded by {manifest['superseded_by']} after an erasure "
                f"({manifest['erased_at'][:19]}): use that one")
    return (f"dataset {manifest['id']} was erased ({manifest['erased_at'][:19]}): every row it held came from erased "
            "data, so nothing replaced it")


def list_datasets(root: Path, include_superseded: bool = False) -> list[dict]:
    """Manifests of every complete dataset, oldest first; superseded ones (tombstones) only when asked for. A dataset
    an erasure rewrote keeps its ``created_at`` and comes after the one it superseded (``written_at``)."""
    if not root.is_dir():
        return []
    manifests = [json.loads((d / "manifest.json").read_text()) for d in root.iterdir()
                 if d.is_dir() and not d.name.startswith(".") and (d / "manifest.json").exists()]
    return sorted((m for m in manifests if include_superseded or not superseded(m)),
                  key=lambda m: (m["created_at"], m.get("written_at", ""), m["id"]))


def verify_dataset(folder: Path) -> dict:
    """The manifest, after checking every file against its recorded hash; a superseded dataset is refused."""
    manifest = json.loads((folder / "manifest.json").read_text())
    if superseded(manifest):
        raise ValueError(superseded_message(manifest))
    for name, digest in manifest["files"].items():
        if hashlib.sha256((folder / name).read_bytes()).hexdigest() != digest:
            raise ValueError(f"dataset {manifest['id']}: {name} does not match its recorded hash")
    return manifest


def used_interactions(root: Path) -> set[str]:
    """Interactions some dataset was built from. A tombstone keeps none: its surviving ones are listed by the dataset
    that superseded it, and an erased one is gone from the log."""
    return {i for manifest in list_datasets(root) for i in manifest.get("source_interaction_ids", [])}
