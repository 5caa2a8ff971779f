"""Datasets are immutable, versioned folders: JSONL files plus a manifest with hashes and lineage."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from affinage.atomic import fsync_dir, fsync_file

KINDS = ("sft", "preference", "kto", "heldout")  # heldout: paraphrases kept for the gates, never trained on


def write_dataset(root: Path, rows: dict[str, list[dict]], manifest: dict) -> dict:
    """Write every file to a temporary folder, then rename it into place: a dataset is whole or absent."""
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
    try:
        files = {}
        for kind in KINDS:
            data = "".join(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n" for row in rows.get(kind, []))
            (tmp / f"{kind}.jsonl").write_text(data, encoding="utf-8")
            files[f"{kind}.jsonl"] = hashlib.sha256(data.encode("utf-8")).hexdigest()
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


def list_datasets(root: Path) -> list[dict]:
    """Manifests of every complete dataset, oldest first."""
    if not root.is_dir():
        return []
    manifests = [json.loads((d / "manifest.json").read_text()) for d in root.iterdir()
                 if d.is_dir() and not d.name.startswith(".") and (d / "manifest.json").exists()]
    return sorted(manifests, key=lambda m: m["created_at"])


def verify_dataset(folder: Path) -> dict:
    """The manifest, after checking every file against its recorded hash."""
    manifest = json.loads((folder / "manifest.json").read_text())
    for name, digest in manifest["files"].items():
        if hashlib.sha256((folder / name).read_bytes()).hexdigest() != digest:
            raise ValueError(f"dataset {manifest['id']}: {name} does not match its recorded hash")
    return manifest


def used_interactions(root: Path) -> set[str]:
    return {i for manifest in list_datasets(root) for i in manifest.get("source_interaction_ids", [])}
