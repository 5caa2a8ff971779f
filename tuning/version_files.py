"""A version's folder on disk: sealing a staged folder before it is registered (allowed files only, each hashed
into the manifest, everything fsynced) and checking a registered folder against its manifest before it is loaded."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from affinage.core.atomic import fsync_dir, fsync_file
from tuning.versions import RegistryError, Version, finite

ALLOWED_SUFFIXES = (".safetensors", ".json", ".txt", ".jinja", ".model", ".md")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def seal(staged: Path, manifest: dict) -> dict:
    """Refuse a bad id or a file that is not weights or configuration, hash every file of ``staged`` into the
    manifest, write it and fsync the folder; returns the manifest as written."""
    version_id = manifest["id"]
    if not version_id or "/" in version_id or version_id.startswith("."):
        raise RegistryError(f"refusing version id {version_id!r}: it must be a plain folder name")
    refused = [p.name for p in staged.rglob("*") if p.is_file() and not p.name.endswith(ALLOWED_SUFFIXES)]
    if refused:
        raise RegistryError(f"refusing to register non-safetensors files: {', '.join(sorted(refused))}")
    files = {str(p.relative_to(staged)): sha256_file(p) for p in sorted(staged.rglob("*")) if p.is_file()}
    manifest = finite({**manifest, "files": files})
    (staged / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False, allow_nan=False))
    for path in staged.rglob("*"):
        if path.is_file():
            fsync_file(path)
    fsync_dir(staged)
    return manifest


def verify_folder(version: Version) -> Path:
    """The version's folder, after checking that its files are exactly those hashed in its registered manifest."""
    manifest_file = version.path / "manifest.json"
    if not manifest_file.is_file() or json.loads(manifest_file.read_text()) != version.manifest:
        raise RegistryError(f"version {version.id}: manifest.json is missing or differs from the registered one; "
                            "refusing to load it")
    recorded = version.manifest.get("files", {})
    # state.json: left in the folders of a registry imported from files, never read
    present = {str(p.relative_to(version.path)) for p in version.path.rglob("*") if p.is_file()} - {"manifest.json",
                                                                                                   "state.json"}
    weights = {name for name in present if not name.startswith("report")}
    if weights - set(recorded):
        raise RegistryError(f"version {version.id}: unrecorded files {', '.join(sorted(weights - set(recorded)))}")
    for name, digest in recorded.items():
        path = version.path / name
        if not path.is_file() or sha256_file(path) != digest:
            raise RegistryError(f"version {version.id}: {name} does not match its recorded sha256; refusing to load it")
    return version.path
