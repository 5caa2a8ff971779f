"""The right to be forgotten (GDPR art. 17): erase one person's interactions, feedback, corrections, example-bank
entries and job-log lines, supersede the datasets built from them and flag the versions trained on those.

An erasure is recorded before anything is deleted (the ``erasures`` row, state 'running', with the interaction ids it
resolved, and a line in ``<home>/erasures.jsonl``), so a run killed half-way is finished by running it again: the
same selector hashes to the same row, which is resumed and its ids merged. Each later step stores its result on that
row as it ends, so a resumed run reports the whole erasure. Records hold no personal data: the selector only as
sha256("kind:value"), random ids and counts. ``reapply`` replays every recorded erasure by its ids, which is what a
restore from a backup taken before an erasure needs (the journal file outlives the database it is restored over).

This module is the top layer: it wires ``agent.erasure`` (the log), ``synth_data.erasure`` (datasets) and
``tuning.registry`` (versions).
"""

from __future__ import annotations

import json
import logging
import os
from datetime import timedelta
from pathlib import Path
from typing import Callable

from sqlalchemy import select

from affinage.core.database import lock_for_writing
from affinage.core.settings import Settings
from affinage.core.store import Store
from affinage.core.tables import Erasure, RegistryEvent
from affinage.core.timeutil import utcnow
from affinage.retrain import follow_up
from agent.erasure import (
    KINDS,
    TABLES,
    Selector,
    SelectorError,
    delete_rows,
    left_in_log,
    resolve,
)
from synth_data.erasure import leftover_rows, supersede_datasets
from tuning.registry import Registry

log = logging.getLogger("affinage.erasure")
RESCAN_MARGIN = timedelta(minutes=5)  # clock skew between replicas, for the second (locked) scan of new rows
__all__ = ["KINDS", "Selector", "SelectorError", "check", "forget", "reapply"]


def journal_path(settings: Settings) -> Path:
    return settings.home / "erasures.jsonl"


def _merge_datasets(recorded: list, new: list) -> list:
    by_old = {d["old"]: d for d in recorded}
    for item in new:
        by_old[item["old"]] = {**by_old.get(item["old"], {}), **item}
    return list(by_old.values())


# -- the hooks into datasets and the registry (synth_data.erasure, tuning.registry, affinage.retrain) ----------------

def _supersede(settings: Settings, ids: set[str], matching: str | None) -> list[dict]:
    return list(supersede_datasets(settings.datasets_dir, set(ids), matching))


def _flag(settings: Settings, store: Store, dataset_ids: list[str], erasure_id: str, actor: str,
          texts: set[str]) -> list[str]:
    """Flag the versions trained on the superseded datasets; ``texts`` (memory only) are scrubbed from their gate
    reports."""
    if not dataset_ids:
        return []
    return list(Registry.open(settings, store).flag_trained_on_erased(
        dataset_ids, erasure_id, actor, erased_texts=sorted(t for t in texts if t and t.strip())))


def _follow_up(settings: Settings, store: Store, flagged: list[str], actor: str) -> str | None:
    """The retrain job ``erasure_followup = "retrain"`` queues, if any."""
    return follow_up(settings, store, flagged, actor) if flagged else None


def _leftover_dataset_rows(settings: Settings, ids: set[str], matching: str | None) -> dict[str, int]:
    return dict(leftover_rows(settings.datasets_dir, set(ids), matching))


# -- records: the erasures row and the journal ----------------------------------------------------------------------

def _journal(settings: Settings, row: Erasure) -> None:
    """Append the erasure's ids to the journal, synced: the record that survives restoring an older database."""
    path = journal_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    entry = {"id": row.id, "at": utcnow().isoformat(), "actor": row.actor, "selector_kind": row.selector_kind,
             "selector_hash": row.selector_hash, "state": row.state, "interaction_ids": sorted(row.interaction_ids),
             "example_ids": sorted(row.example_ids)}
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(entry) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def read_journal(settings: Settings) -> list[dict]:
    """The journal's erasures, one per id with the union of its lines' ids; a torn last line is skipped."""
    path = journal_path(settings)
    if not path.is_file():
        return []
    merged: dict[str, dict] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        known = merged.setdefault(entry["id"], {**entry, "interaction_ids": [], "example_ids": []})
        known["interaction_ids"] = sorted(set(known["interaction_ids"]) | set(entry.get("interaction_ids", [])))
        known["example_ids"] = sorted(set(known["example_ids"]) | set(entry.get("example_ids", [])))
        known["state"] = "done" if "done" in (known["state"], entry.get("state")) else known["state"]
    return list(merged.values())


def _begin(settings: Settings, store: Store, selector: Selector, actor: str, ids: set[str],
           example_ids: set[str]) -> tuple[Erasure, bool]:
    """Resume the running erasure with this selector's hash (merging ids) or record a new one; True if resumed."""
    with store.session() as session:
        row = session.scalars(select(Erasure).where(Erasure.selector_hash == selector.hash, Erasure.state == "running")
                              .order_by(Erasure.created_at).limit(1)).first()
        resumed = row is not None
        if row is None:
            row = Erasure(actor=actor, selector_kind=selector.kind, selector_hash=selector.hash, state="running",
                          interaction_ids=sorted(ids), example_ids=sorted(example_ids), counts={}, datasets=[],
                          versions=[])
            session.add(row)
        else:
            row.interaction_ids = sorted(set(row.interaction_ids) | ids)
            row.example_ids = sorted(set(row.example_ids or []) | example_ids)
    _journal(settings, row)
    return row, resumed


def _update(store: Store, erasure_id: str, **values) -> Erasure:
    with store.session() as session:
        row = session.get(Erasure, erasure_id)
        for name, value in values.items():
            setattr(row, name, value)
    return row


def _sum(a: dict, b: dict) -> dict:
    return {k: int(a.get(k, 0)) + int(b.get(k, 0)) for k in TABLES}


# -- the three operations ------------------------------------------------------------------------------------------

def forget(settings: Settings, store: Store, selector: Selector, actor: str,
           progress: Callable[[str], None] | None = None) -> dict:
    """Erase everything the selector names; returns the report (numbers and ids only, never content)."""
    say = progress or (lambda message: None)
    started = utcnow()
    texts = {selector.value} if selector.kind == "matching" else set()  # held in memory only, for _flag
    with store.session() as session:
        ids, example_ids = resolve(session, selector)
    row, resumed = _begin(settings, store, selector, actor, ids, example_ids)
    say(f"erasure {row.id}: {'resuming, ' if resumed else ''}{len(row.interaction_ids)} interactions found")

    with store.session() as session:  # one transaction: every row of the erasure goes, or none does
        lock_for_writing(session)  # SQLite: nothing is written between the locked re-scan and the deletes
        # Again under the lock: what was logged since the first look goes too.
        late_ids, late_examples = resolve(session, selector, since=started - RESCAN_MARGIN)
        record = session.get(Erasure, row.id)
        all_ids = set(record.interaction_ids) | ids | late_ids
        all_examples = set(record.example_ids or []) | example_ids | late_examples
        deleted = delete_rows(session, all_ids, all_examples, selector, texts)
        record.interaction_ids, record.example_ids = sorted(all_ids), sorted(all_examples)
        record.counts = _sum(record.counts or {}, deleted)
    if all_ids != set(row.interaction_ids) or all_examples != set(row.example_ids):
        _journal(settings, record)  # the locked look found more: the journal must name them for a restore
    say("deleted " + ", ".join(f"{n} {table}" for table, n in record.counts.items()))

    matching = selector.value if selector.kind == "matching" else None
    superseded = _supersede(settings, all_ids, matching)
    record = _update(store, row.id, datasets=_merge_datasets(record.datasets or [], superseded))
    say(f"{len(record.datasets)} datasets superseded")
    flagged = _flag(settings, store, [d["old"] for d in record.datasets], row.id, actor, texts)
    record = _update(store, row.id, versions=sorted(set(record.versions or []) | set(flagged)))
    job = _follow_up(settings, store, record.versions, actor)

    with store.session() as session:
        record = session.get(Erasure, row.id)
        record.state, record.finished_at = "done", utcnow()
        session.add(RegistryEvent(action="erasure", version=f"erasure:{row.id}", actor=actor, details={
            "selector": selector.kind, "selector_hash": selector.hash, **record.counts,
            "datasets_superseded": len(record.datasets), "versions_flagged": len(record.versions)}))
    _journal(settings, record)
    if not store.purge_deleted():
        log.warning("erasure done, but a reader kept SQLite's write-ahead log from being emptied: the erased rows "
                    "leave it at the next checkpoint", extra={"erasure_id": row.id})
    report = _report(record, resumed, job)
    log.info("erasure done", extra={k: report[k] for k in ("erasure_id", "selector", "selector_hash", "counts")}
             | {"datasets_superseded": len(report["datasets"]), "versions_flagged": len(report["versions"])})
    return report


def _report(row: Erasure, resumed: bool, job: str | None) -> dict:
    counts = {k: int((row.counts or {}).get(k, 0)) for k in TABLES}
    datasets, versions = list(row.datasets or []), list(row.versions or [])
    return {"erasure_id": row.id, "selector": row.selector_kind, "selector_hash": row.selector_hash,
            "actor": row.actor, "state": row.state, "resumed": resumed, "counts": counts, "datasets": datasets,
            "versions": versions, "follow_up_job": job,
            "nothing_found": not any(counts.values()) and not datasets and not versions}


def check(settings: Settings, store: Store, selector: Selector, bank=None) -> dict[str, int]:
    """What is left of what the selector names: kinds and counts, never content; empty means clean. It looks in the
    database (with the ids every erasure of this selector recorded), the job logs, the datasets and, given a running
    service's example bank, its in-memory vectors."""
    left: dict[str, int] = {}
    with store.session() as session:
        ids, example_ids = resolve(session, selector)
        recorded = session.scalars(select(Erasure).where(Erasure.selector_hash == selector.hash)).all()
        for row in recorded:
            ids |= set(row.interaction_ids)
            example_ids |= set(row.example_ids or [])
        left["unfinished_erasures"] = sum(row.state != "done" for row in recorded)
        left.update(left_in_log(session, selector, ids, example_ids))
    matching = selector.value if selector.kind == "matching" else None
    for kind, n in _leftover_dataset_rows(settings, ids, matching).items():
        left[f"dataset_rows:{kind}"] = n
    if bank is not None:
        left["example_bank_cache"] = sum(
            e.id in example_ids or e.interaction_id in ids or selector.matches(e.question) or selector.matches(e.answer)
            for e in bank.in_memory())
    return {kind: n for kind, n in left.items() if n}


def reapply(settings: Settings, store: Store, actor: str, progress: Callable[[str], None] | None = None) -> dict:
    """Run every recorded erasure again by its recorded ids (the database's and the journal's): after a restore from
    a backup older than an erasure, this deletes again what the backup brought back. Text-only matches are replayed by
    the example ids recorded for them; nothing here needs the personal data itself."""
    say = progress or (lambda message: None)
    with store.session() as session:
        rows = {row.id: row for row in session.scalars(select(Erasure).order_by(Erasure.created_at))}
    entries = {row.id: {"id": row.id, "actor": row.actor, "selector_kind": row.selector_kind,
                        "selector_hash": row.selector_hash, "interaction_ids": list(row.interaction_ids),
                        "example_ids": list(row.example_ids or [])} for row in rows.values()}
    for entry in read_journal(settings):
        known = entries.setdefault(entry["id"], dict(entry))
        known["interaction_ids"] = sorted(set(known["interaction_ids"]) | set(entry["interaction_ids"]))
        known["example_ids"] = sorted(set(known["example_ids"]) | set(entry["example_ids"]))
    totals, datasets, versions = dict.fromkeys(TABLES, 0), [], []
    for entry in entries.values():
        ids, example_ids = set(entry["interaction_ids"]), set(entry["example_ids"])
        with store.session() as session:
            lock_for_writing(session)
            texts: set[str] = set()
            deleted = delete_rows(session, ids, example_ids, None, texts)
            row = session.get(Erasure, entry["id"])
            if row is None:  # restored from before this erasure: its record comes back from the journal
                row = Erasure(id=entry["id"], actor=entry["actor"], selector_kind=entry["selector_kind"],
                              selector_hash=entry["selector_hash"], interaction_ids=sorted(ids),
                              example_ids=sorted(example_ids), counts={}, datasets=[], versions=[])
                session.add(row)
        superseded = _supersede(settings, ids, None)
        row = _update(store, entry["id"], datasets=_merge_datasets(row.datasets or [], superseded))
        flagged = _flag(settings, store, [d["old"] for d in row.datasets], entry["id"], actor, texts)
        _update(store, entry["id"], versions=sorted(set(row.versions or []) | set(flagged)), state="done",
                finished_at=row.finished_at or utcnow())
        totals = _sum(totals, deleted)
        datasets += superseded
        versions += [v for v in flagged if v not in versions]
        say(f"erasure {entry['id']}: " + ", ".join(f"{n} {table}" for table, n in deleted.items()))
    with store.session() as session:
        session.add(RegistryEvent(action="erasures reapplied", version="erasures", actor=actor,
                                  details={"erasures": len(entries), **totals}))
    job = _follow_up(settings, store, versions, actor)
    report = {"erasures": len(entries), "counts": totals, "datasets": datasets, "versions": versions,
              "follow_up_job": job}
    log.info("erasures reapplied", extra={"erasures": len(entries), "counts": totals})
    return report
