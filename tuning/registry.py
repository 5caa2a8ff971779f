"""The model registry: immutable version folders on disk, their lifecycle and the serving pointer in the database.

``<home>/registry/versions/<id>/`` holds a version's weights (safetensors only), its ``manifest.json`` (with the
sha256 of every file) and later its gate reports, which alone change after registration. The rest lives in the
store (``affinage.core.store``), so every process sharing the database sees one registry: ``registry_versions``
(a row per version: its lifecycle candidate -> gated-passed | gated-failed -> approved | rejected, or superseded
by another candidate of its search; its gate verdict; a copy of its manifest; a folder without a row is not a
version), ``registry_pointer`` (the active version, NULL for the bare base model, the promotion history and a
``generation`` that grows at every move: promotion and rollback move it by compare-and-set in one transaction with
their audit event, so two processes promoting at once cannot both win) and ``registry_events`` (the audit log);
``active`` and ``retired`` come from the pointer.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from affinage.core.atomic import fsync_dir
from affinage.core.tables import RegistryEvent, RegistryPointer, RegistryVersion
from affinage.core.store import Store, shared_store
from affinage.core.timeutil import utcnow
from tuning.registry_files import import_file_registry, retire_files
from tuning.report import scrub, scrub_report
from tuning.version_files import seal, verify_folder
from tuning.versions import (  # BASE, RegistryError, UnknownVersion, Version: also imported from here by callers
    BASE, ERASED_FLAG, GATEABLE, PROMOTABLE, RegistryError, UnknownVersion, Version, canary_of, erased_lineage,
    event_json, move_details, now, promotion)

log = logging.getLogger("affinage.registry")
POINTER_ID = 1


class Registry:
    """One registry: ``root`` is the artifact directory, ``store`` the database its metadata lives in.

    Opening it creates the pointer row; the first open of a workspace whose registry still lives in files
    (``ACTIVE``, ``state.json``, ``events.jsonl``) imports them in the same transaction (``tuning.registry_files``).
    ``crash_hook(step)`` is called between the steps of a write, for the crash tests.
    """

    def __init__(self, root: Path, store: Store, crash_hook=None):
        self.root, self.store = root, store
        self.versions = root / "versions"
        self._crash_hook = crash_hook or (lambda step: None)
        self._open_pointer()

    @classmethod
    def open(cls, settings, store: Store | None = None) -> "Registry":
        """The workspace's registry, in ``store`` or, by default, this process's store on ``settings.db_url``."""
        return cls(settings.registry_dir, store or shared_store(settings.db_url))

    def _open_pointer(self) -> None:
        with self.store.session() as session:
            if session.get(RegistryPointer, POINTER_ID) is not None:
                return
        try:
            with self.store.session() as session:
                imported = import_file_registry(self.root, session)
                pointer = imported.pointer if imported else {"active": None, "history": [], "ever_active": []}
                session.add(RegistryPointer(id=POINTER_ID, generation=0, **pointer))
        except IntegrityError:  # another process opened the registry at the same moment and did this
            with self.store.session() as session:
                if session.get(RegistryPointer, POINTER_ID) is None:
                    raise
            return
        if imported:
            retire_files(imported)
            log.info("registry metadata imported from files into the database",
                     extra={"versions": imported.versions, "events": imported.events})

    # -- adding --------------------------------------------------------------------------------------------------
    def staging(self) -> Path:
        """An empty folder to save a new version into; ``add`` moves it into place."""
        self.versions.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.versions))

    def add(self, staged: Path, manifest: dict) -> Version:
        """Hash every file of ``staged``, write its manifest, rename it into place, then record it as a candidate.

        The rename comes first and fails if the folder exists, so two processes cannot register one id; a process
        killed between the rename and the row leaves a folder that is not a version (and is never loaded).
        """
        version_id = manifest["id"]
        try:
            manifest = seal(staged, manifest)
            if self._row(version_id) is not None or (self.versions / version_id).exists():
                raise RegistryError(f"version {version_id} already exists")
            os.rename(staged, self.versions / version_id)
            fsync_dir(self.versions)
        except BaseException:
            shutil.rmtree(staged, ignore_errors=True)
            raise
        self._crash_hook("folder-renamed")
        with self.store.session() as session:
            session.add(RegistryVersion(id=version_id, state="candidate", gate=None, manifest=manifest))
            session.add(RegistryEvent(action="registered", version=version_id, actor="trainer", details={}))
        return self.get(version_id)

    # -- reading -------------------------------------------------------------------------------------------------
    def pointer_state(self) -> dict:
        """``{"active", "history", "ever_active", "generation", "canary"}``: one read of the pointer row."""
        with self.store.session() as session:
            row = session.get(RegistryPointer, POINTER_ID)
            return {"active": row.active, "history": list(row.history), "ever_active": list(row.ever_active),
                    "generation": row.generation, "canary": row.canary}

    def active_id(self) -> str | None:
        """The serving version, or None for the bare base model."""
        with self.store.session() as session:
            return session.scalar(select(RegistryPointer.active).where(RegistryPointer.id == POINTER_ID))

    def get(self, version_id: str, pointer: dict | None = None) -> Version:
        if (row := self._row(version_id)) is None:
            raise UnknownVersion(f"no version {version_id!r} in the registry (see `affinage models`)")
        return self._version(row, pointer or self.pointer_state())

    def list(self) -> list[Version]:
        """Every registered version, oldest first."""
        pointer = self.pointer_state()
        with self.store.session() as session:
            rows = session.scalars(select(RegistryVersion)).all()
        return sorted((self._version(r, pointer) for r in rows), key=lambda v: (v.manifest.get("created_at", ""), v.id))

    def verify(self, version_id: str) -> Path:
        """The version's folder, after checking that its files are exactly those hashed in its registered manifest."""
        return verify_folder(self.get(version_id))

    def events(self) -> list[dict]:
        """The audit log, oldest first: ``{"at", "action", "version", "actor", **details}``."""
        with self.store.session() as session:
            return [event_json(e) for e in session.scalars(select(RegistryEvent).order_by(RegistryEvent.id))]

    # -- lifecycle -----------------------------------------------------------------------------------------------
    def record_gate(self, version_id: str, passed: bool, summary: dict, actor: str = "gates") -> Version:
        version = self.get(version_id)
        if version.state not in GATEABLE:
            raise RegistryError(f"version {version_id} is {version.state}; only candidates are gated")
        self._set_lifecycle(version, "gated-passed" if passed else "gated-failed", "gated", actor, {"passed": passed},
                            gate={"passed": passed, "at": now(), **summary})
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
        details = {"comment": comment.strip()}
        if approve and version.state == "gated-failed":
            details["override_reason"] = override_reason.strip()
        self._set_lifecycle(version, "approved" if approve else "rejected", "approved" if approve else "rejected",
                            actor, details)
        return self.get(version_id)

    def supersede(self, version_id: str, by: str, actor: str, details: dict | None = None) -> Version:
        """Mark a candidate ``superseded``: ``by``, of the same search, was proposed instead; it keeps its report."""
        if (version := self.get(version_id)).state not in (*GATEABLE, "superseded"):
            raise RegistryError(f"version {version_id} is {version.state}; only undecided candidates are superseded")
        if version.state != "superseded":
            self._set_lifecycle(version, "superseded", "superseded", actor, {"by": by, **(details or {})})
        return self.get(version_id)

    def promote(self, version_id: str, actor: str) -> Version:
        """Make ``version_id`` serve (ending its canary); it must have passed its gates and match its hashes."""
        pointer = self.pointer_state()
        version = self.get(version_id, pointer)
        if version.state == "active":
            raise RegistryError(f"version {version_id} is already active")
        if version.lifecycle not in PROMOTABLE:  # a retired version keeps its last decision
            raise RegistryError(f"version {version_id} is {version.state}: only a version that passed its gates "
                                "(gated-passed or approved) can be promoted")
        new = promotion(pointer, version_id)  # refused while a canary of another version runs
        self.verify(version_id)
        self._move_pointer(pointer, new, "promoted", version_id, actor)
        return self.get(version_id)

    def rollback(self, actor: str) -> str | None:
        """Serve the previously active version again, ending any canary; returns it (None: the bare base model)."""
        pointer = self.pointer_state()
        if not pointer["history"]:
            raise RegistryError("nothing to roll back to: no version has been promoted")
        previous = pointer["history"][-1]
        if previous is not None:
            self.verify(previous)
        self._move_pointer(pointer, {"active": previous, "history": pointer["history"][:-1], "canary": None},
                           "rolled_back", previous or BASE, actor)
        return previous

    def flag_trained_on_erased(self, dataset_ids: list[str], erasure_id: str, actor: str,
                               erased_texts: Iterable[str] = ()) -> list[str]:
        """Flag every version trained on one of ``dataset_ids`` (an erasure superseded them), and every version
        that continued such a version's adapter (``start_from``), since its weights hold the same data; returns
        them, oldest first. One ``flagged`` audit event per version and erasure: a rerun changes nothing. Nothing
        is promoted or rolled back here (``affinage.retrain.follow_up`` decides what follows).

        ``erased_texts`` (the erased questions, the selector's text) are replaced by ``[erased]`` wherever the
        flagged versions' gate reports and verdicts quote them (``tuning.report.scrub_report``)."""
        erased, versions, texts = set(dataset_ids), self.list(), list(erased_texts)
        learnt, via = erased_lineage(versions, erased)
        flagged = [v.id for v in versions if v.id in learnt]
        for version_id in flagged:
            with self.store.session() as session:
                row = session.get(RegistryVersion, version_id, with_for_update=True)
                old = (row.flags or {}).get(ERASED_FLAG) or {}
                datasets = sorted({*old.get("datasets", []), *learnt[version_id]})
                erasures = list(dict.fromkeys([*old.get("erasures", []), erasure_id]))
                if datasets != old.get("datasets") or erasures != old.get("erasures"):
                    extra = {"via": via[version_id]} if version_id in via else {}
                    row.flags = {**(row.flags or {}), ERASED_FLAG: {
                        "datasets": datasets, "erasure": erasure_id, "erasures": erasures, "at": now(), **extra}}
                    session.add(RegistryEvent(action="flagged", version=version_id, actor=actor, details={
                        "flag": ERASED_FLAG, "erasure": erasure_id, "datasets": sorted(learnt[version_id]), **extra}))
                gate, quotes = scrub(row.gate, texts, keep=("at",))
                if quotes:
                    row.gate = gate
            quotes = scrub_report(self.versions / version_id, texts)
            if quotes:
                log.info("erased text removed from a gate report", extra={"version": version_id, "quotes": quotes})
        return flagged

    # -- writing -------------------------------------------------------------------------------------------------
    def _row(self, version_id: str) -> RegistryVersion | None:
        with self.store.session() as session:
            return session.get(RegistryVersion, version_id)

    def _version(self, row: RegistryVersion, pointer: dict) -> Version:
        state = "active" if row.id == pointer["active"] else ("retired" if row.id in pointer["ever_active"] else
                                                                row.state)
        return Version(row.id, state, row.manifest, self.versions / row.id, row.state, row.gate, row.flags,
                       canary_of(pointer, row.id))

    def _set_lifecycle(self, version: Version, state: str, action: str, actor: str, details: dict,
                       gate: dict | None = None) -> None:
        """Move the version's lifecycle and log it in one transaction, only if nobody moved or promoted it since it was
        read (a reject racing a promotion must not leave the serving version marked rejected).

        A new ``gate`` verdict replaces the stored one. A decision (no ``gate``) leaves the verdict alone and also
        requires it to be the one that was read: re-gating keeps a version gated-passed, so the state alone would let an
        approval of the old verdict through and write that verdict back over the new one."""
        seen = (version.gate or {}).get("at") if gate is None else None
        with self.store.session() as session:
            moved = session.execute(update(RegistryVersion)
                                    .where(RegistryVersion.id == version.id, RegistryVersion.state == version.lifecycle,
                                           *([RegistryVersion.gate["at"].as_string() == seen] if seen else []))
                                    .values(state=state, **({"gate": gate} if gate is not None else {})))
            if moved.rowcount != 1:
                raise RegistryError(f"version {version.id} changed while this was being decided (someone else "
                                    "gated or decided it): look at it again")
            # read after the row update: a promotion holding the row commits first, so its pointer is seen here
            if version.id in session.get(RegistryPointer, POINTER_ID).ever_active:
                raise RegistryError(f"version {version.id} was promoted while this was being decided: look at it "
                                    "again (roll back first to take it out of service)")
            session.add(RegistryEvent(action=action, version=version.id, actor=actor, details=details))

    def _move_pointer(self, seen: dict, new: dict, action: str, subject: str, actor: str, details: dict | None = None,
                      also=lambda session: None) -> None:
        """Move the pointer from ``seen`` to ``new`` (columns), do ``also(session)`` and write the event (``details``,
        by default ``move_details``) in one transaction (``tuning.canary``'s rollback also rejects the version there).

        Compare-and-set on the generation: if another process moved the pointer since ``seen`` was read, nothing is
        written and the caller gets a RegistryError. A promotion also requires its version to still be promotable.
        """
        with self.store.session() as session:
            if action == "promoted":
                still = session.execute(update(RegistryVersion)
                                        .where(RegistryVersion.id == subject, RegistryVersion.state.in_(PROMOTABLE))
                                        .values(state=RegistryVersion.state))
                if still.rowcount != 1:
                    raise RegistryError(f"version {subject} was decided again while being promoted: look at it again")
            moved = session.execute(update(RegistryPointer)
                                    .where(RegistryPointer.id == POINTER_ID, RegistryPointer.generation == seen["generation"])
                                    .values(**new, generation=seen["generation"] + 1, updated_at=utcnow()))
            if moved.rowcount != 1:
                what = "canary" if action.startswith("canary") else "active version"
                raise RegistryError(f"the {what} changed while this was being done (another process promoted, rolled "
                                    "back or moved a canary): look at `affinage models` and try again")
            also(session)
            self._crash_hook("pointer-updated")
            session.add(RegistryEvent(action=action, version=subject, actor=actor,
                                      details=move_details(seen) if details is None else details))
            session.flush()
            self._crash_hook("event-written")
        self._crash_hook("committed")
