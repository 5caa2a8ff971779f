"""Upgrading a registry that kept its metadata in files to the database, once, in the transaction that opens it.

Before the registry moved into the database, each version folder held ``state.json`` (lifecycle and gate verdict),
``ACTIVE`` named the serving version and ``events.jsonl`` was the audit log. ``import_file_registry`` reads all
three into a session (committed with the new pointer row, so an upgrade is all or nothing), and ``retire_files``
then renames ``ACTIVE`` and ``events.jsonl`` to ``*.imported`` so nobody mistakes them for the live state.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from sqlalchemy.orm import Session

from affinage.core.tables import RegistryEvent, RegistryVersion
from tuning.versions import RegistryError

log = logging.getLogger("affinage.registry")
LEGACY_FILES = ("ACTIVE", "events.jsonl")


@dataclass
class Imported:
    root: Path
    pointer: dict  # {"active", "history", "ever_active"} from ACTIVE
    versions: int
    events: int
    skipped_lines: list[int] = field(default_factory=list)


def import_file_registry(root: Path, session: Session) -> Imported | None:
    """Add the file-based registry under ``root`` to ``session``; None when there is none.

    Only a registry that still has its ``ACTIVE`` or ``events.jsonl`` is one: version folders alone are what a
    database-backed registry leaves on disk, and a new or restored database must not adopt them as candidates (a
    restore puts the database back first, then the files; see docs/deployment.md).
    """
    versions = root / "versions"
    folders = sorted(d for d in versions.iterdir() if d.is_dir() and not d.name.startswith(".")
                     and (d / "manifest.json").is_file()) if versions.is_dir() else []
    if not any((root / name).exists() for name in LEGACY_FILES):
        if folders:
            log.warning("version folders the database does not know are ignored (restore the database's backup "
                        "if they should be versions)", extra={"folders": len(folders)})
        return None
    for folder in folders:
        record = json.loads((folder / "state.json").read_text()) if (folder / "state.json").is_file() else {}
        session.add(RegistryVersion(id=folder.name, state=record.get("state", "candidate"), gate=record.get("gate"),
                                    manifest=json.loads((folder / "manifest.json").read_text())))
    session.flush()  # the versions before the pointer that names one of them
    pointer = {"active": None, "history": [], "ever_active": []}
    if (root / "ACTIVE").is_file():
        pointer.update(json.loads((root / "ACTIVE").read_text()))
    if pointer["active"] is not None and pointer["active"] not in {f.name for f in folders}:
        raise RegistryError(f"cannot import the registry in {root}: ACTIVE names version {pointer['active']!r}, "
                            "which has no folder with a manifest.json under versions/")
    imported = Imported(root, pointer, len(folders), 0)
    path = root / "events.jsonl"
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines() if path.exists() else [], 1):
        if not line.strip():
            continue
        try:
            event = json.loads(line)
            at = datetime.fromisoformat(event.pop("at"))
            session.add(RegistryEvent(at=at,  # a naive time from an old file is taken as UTC by the column
                                      action=event.pop("action"), version=event.pop("version"),
                                      actor=event.pop("actor"), details=event))
            imported.events += 1
        except (ValueError, KeyError, AttributeError, TypeError):  # a line torn by a crash mid-append
            imported.skipped_lines.append(number)
    if imported.skipped_lines:
        log.warning("events.jsonl lines that are not events were not imported",
                    extra={"lines": imported.skipped_lines})
    return imported


def retire_files(imported: Imported) -> None:
    """Rename the imported ``ACTIVE`` and ``events.jsonl`` out of the way (the database is the truth now)."""
    for name in LEGACY_FILES:
        path = imported.root / name
        if path.exists():
            os.replace(path, imported.root / f"{name}.imported")
