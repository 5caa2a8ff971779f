"""The model registry: immutable version folders, their lifecycle, and one pointer that says which version serves.

Layout under ``<home>/registry``::

    versions/<id>/            adapter (PEFT) or full weights, safetensors only, + manifest.json
    versions/<id>/state.json  lifecycle: candidate -> gated-passed | gated-failed -> approved | rejected
    ACTIVE                    {"active": id | null, "history": [...], "ever_active": [...]}
    events.jsonl              who did what, when

``active`` and ``retired`` are read from the pointer, never stored per version, so promotion and rollback are
one atomic rename of ``ACTIVE``: at every instant exactly one version (or the base model, ``null``) is active.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from affinage.atomic import atomic_write_text, fsync_dir, fsync_file

BASE = "base"  # the version name of the bare base model
LIFECYCLE = ("candidate", "gated-passed", "gated-failed", "approved", "rejected")
PROMOTABLE = ("gated-passed", "approved")
ALLOWED_SUFFIXES = (".safetensors", ".json", ".txt", ".jinja", ".model", ".md")


class RegistryError(ValueError):
    """A refused registry operation; the message says why."""


class UnknownVersion(RegistryError):
    """No version by that id."""


@dataclass
class Version:
    id: str
    state: str  # the lifecycle state, or active/retired as the pointer says
    manifest: dict
    path: Path
    record: dict  # state.json: the last lifecycle state and the gate verdict, kept after retirement

    def to_json(self) -> dict:
        metrics = self.manifest.get("metrics", {})
        return {"id": self.id, "state": self.state, "method": self.manifest.get("method"),
                "created_at": self.manifest.get("created_at"), "datasets": [d["id"] for d in self.manifest.get("datasets", [])],
                "metrics": metrics, "gate": self.record.get("gate")}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def now() -> str:
    return datetime.now(timezone.utc).isoformat()


class Registry:
    def __init__(self, root: Path, crash_hook=None):
        self.root = root
        self.versions = root / "versions"
        self.pointer = root / "ACTIVE"
        self._crash_hook = crash_hook or (lambda step: None)

    # -- adding --------------------------------------------------------------------------------------------------
    def staging(self) -> Path:
        """An empty folder to save a new version into; ``add`` moves it into place."""
        self.versions.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.versions))

    def add(self, staged: Path, manifest: dict) -> Version:
        """Hash every file of ``staged``, write its manifest and state, and rename it into place as a candidate."""
        try:
            refused = [p.name for p in staged.rglob("*") if p.is_file() and not p.name.endswith(ALLOWED_SUFFIXES)]
            if refused:
                raise RegistryError(f"refusing to register non-safetensors files: {', '.join(sorted(refused))}")
            files = {str(p.relative_to(staged)): sha256_file(p) for p in sorted(staged.rglob("*")) if p.is_file()}
            version_id = manifest["id"]
            manifest = {**manifest, "files": files}
            (staged / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False))
            (staged / "state.json").write_text(json.dumps({"state": "candidate", "gate": None}, indent=2))
            for path in staged.rglob("*"):
                if path.is_file():
                    fsync_file(path)
            fsync_dir(staged)
            if (self.versions / version_id).exists():
                raise RegistryError(f"version {version_id} already exists")
            os.rename(staged, self.versions / version_id)
            fsync_dir(self.versions)
        except BaseException:
            shutil.rmtree(staged, ignore_errors=True)
            raise
        self._event("registered", version_id, actor="trainer")
        return self.get(version_id)

    # -- reading -------------------------------------------------------------------------------------------------
    def pointer_state(self) -> dict:
        if not self.pointer.exists():
            return {"active": None, "history": [], "ever_active": []}
        return json.loads(self.pointer.read_text())

    def active_id(self) -> str | None:
        """The serving version, or None for the bare base model."""
        return self.pointer_state()["active"]

    def get(self, version_id: str, pointer: dict | None = None) -> Version:
        folder = self.versions / version_id
        if "/" in version_id or version_id.startswith(".") or not (folder / "manifest.json").is_file():
            raise UnknownVersion(f"no version {version_id!r} in the registry (see `affinage models`)")
        pointer = pointer or self.pointer_state()
        record = json.loads((folder / "state.json").read_text())
        if version_id == pointer["active"]:
            state = "active"
        elif version_id in pointer["ever_active"]:
            state = "retired"
        else:
            state = record["state"]
        return Version(version_id, state, json.loads((folder / "manifest.json").read_text()), folder, record)

    def list(self) -> list[Version]:
        """Every complete version, oldest first (half-written ``.tmp-`` folders are not versions)."""
        if not self.versions.is_dir():
            return []
        ids = [d.name for d in self.versions.iterdir() if d.is_dir() and not d.name.startswith(".")
               and (d / "manifest.json").is_file()]
        pointer = self.pointer_state()
        return sorted((self.get(i, pointer) for i in ids), key=lambda v: v.manifest.get("created_at", ""))

    def verify(self, version_id: str) -> Path:
        """The version's folder, after checking that its files are exactly those hashed in its manifest."""
        version = self.get(version_id)
        recorded = version.manifest.get("files", {})
        present = {str(p.relative_to(version.path)) for p in version.path.rglob("*") if p.is_file()} - {"manifest.json",
                                                                                                       "state.json"}
        weights = {name for name in present if not name.startswith("report")}
        if weights - set(recorded):
            raise RegistryError(f"version {version_id}: unrecorded files {', '.join(sorted(weights - set(recorded)))}")
        for name, digest in recorded.items():
            path = version.path / name
            if not path.is_file() or sha256_file(path) != digest:
                raise RegistryError(f"version {version_id}: {name} does not match its recorded sha256; refusing to load it")
        return version.path

    # -- lifecycle -----------------------------------------------------------------------------------------------
    def record_gate(self, version_id: str, passed: bool, summary: dict, actor: str = "gates") -> Version:
        version = self.get(version_id)
        if version.state not in ("candidate", "gated-passed", "gated-failed"):
            raise RegistryError(f"version {version_id} is {version.state}; only candidates are gated")
        self._write_state(version, {"state": "gated-passed" if passed else "gated-failed",
                                    "gate": {"passed": passed, "at": now(), **summary}})
        self._event("gated", version_id, actor=actor, passed=passed)
        return self.get(version_id)

    def decide(self, version_id: str, approve: bool, actor: str, comment: str,
               override_reason: str | None = None) -> Version:
        """Approve or reject a gated version, with a required comment.

        A version that failed its gates is approved only with ``override_reason`` (the console allows that to
        admins alone); the reason stays in the audit log.
        """
        version = self.get(version_id)
        if not comment or not comment.strip():
            raise RegistryError("a decision needs a comment saying why")
        if version.state not in ("gated-passed", "gated-failed"):
            raise RegistryError(f"version {version_id} is {version.state}; only gated versions are approved or rejected")
        if approve and version.state == "gated-failed" and not (override_reason or "").strip():
            raise RegistryError(f"version {version_id} failed its gates: approving it needs an admin's written "
                                "override reason")
        self._write_state(version, {**version.record, "state": "approved" if approve else "rejected"})
        details = {"comment": comment.strip()}
        if approve and version.state == "gated-failed":
            details["override_reason"] = override_reason.strip()
        self._event("approved" if approve else "rejected", version_id, actor=actor, **details)
        return self.get(version_id)

    def promote(self, version_id: str, actor: str) -> Version:
        """Make ``version_id`` the serving version; it must have passed its gates and match its hashes."""
        version = self.get(version_id)
        lifecycle = version.record.get("state")  # a retired version keeps its last decision
        if version.state == "active":
            raise RegistryError(f"version {version_id} is already active")
        if version.state not in PROMOTABLE and not (version.state == "retired" and lifecycle in PROMOTABLE):
            raise RegistryError(f"version {version_id} is {version.state}: only a version that passed its gates "
                                "(gated-passed or approved) can be promoted")
        self.verify(version_id)
        pointer = self.pointer_state()
        self._swap_pointer({"active": version_id, "history": [*pointer["history"], pointer["active"]],
                            "ever_active": sorted({*pointer["ever_active"], version_id})})
        self._event("promoted", version_id, actor=actor, previous=pointer["active"])
        return self.get(version_id)

    def rollback(self, actor: str) -> str | None:
        """Serve the version that was active before the current one again; returns it (None: the base model)."""
        pointer = self.pointer_state()
        if not pointer["history"]:
            raise RegistryError("nothing to roll back to: no version has been promoted")
        previous = pointer["history"][-1]
        if previous is not None:
            self.verify(previous)
        self._swap_pointer({"active": previous, "history": pointer["history"][:-1],
                            "ever_active": pointer["ever_active"]})
        self._event("rolled_back", previous or BASE, actor=actor, previous=pointer["active"])
        return previous

    def events(self) -> list[dict]:
        path = self.root / "events.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []

    # -- writing -------------------------------------------------------------------------------------------------
    def _swap_pointer(self, state: dict) -> None:
        """Write temp, fsync, rename over ACTIVE, fsync the folder: readers see the old pointer or the new one."""
        self.root.mkdir(parents=True, exist_ok=True)
        for stale in self.root.glob(".ACTIVE.*.tmp"):  # left by a process killed mid-write
            stale.unlink(missing_ok=True)
        tmp = self.root / f".ACTIVE.{os.getpid()}.tmp"
        with tmp.open("w", encoding="utf-8") as handle:
            handle.write(json.dumps(state, indent=2))
            self._crash_hook("pointer-written")
            handle.flush()
            os.fsync(handle.fileno())
        self._crash_hook("pointer-fsynced")
        os.replace(tmp, self.pointer)
        self._crash_hook("pointer-renamed")
        fsync_dir(self.root)
        self._crash_hook("directory-fsynced")

    def _write_state(self, version: Version, state: dict) -> None:
        atomic_write_text(version.path / "state.json", json.dumps(state, indent=2))

    def _event(self, action: str, version_id: str, actor: str, **details) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"at": now(), "action": action, "version": version_id, "actor": actor, **details})
        with (self.root / "events.jsonl").open("a", encoding="utf-8") as handle:
            handle.write(line + "\n")
            handle.flush()
            os.fsync(handle.fileno())
