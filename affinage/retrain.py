"""What follows an erasure for the models, by ``erasure_followup``: "report" leaves the flagged versions to an
operator; "retrain" also queues a worker job that trains a candidate on the cleaned data.

The retrain job is a cycle whose triage, remedies and synth are marked done: its synth output names the newest
dataset that superseded a flagged one, so the worker runs the search (candidates trained and gated) -> promotion
policy on it as on any cycle.
Training starts from the base model while the active version is flagged (``affinage.search``), since continuing
that adapter would keep the erased data in the weights. Nothing here promotes, rolls back or swaps a version.
"""

from __future__ import annotations

import logging

from sqlalchemy import select

from affinage.core.settings import Settings
from affinage.core.tables import Job
from affinage.core.store import Store
from affinage.core.datasets import list_datasets
from synth_data.erasure import current_dataset
from tuning import jobs
from tuning.registry import Registry

log = logging.getLogger("affinage.erasure")
KIND = "retrain"  # a job kind of its own: it may queue while a cycle runs, and never blocks the worker's triggers


def retrain_dataset(settings: Settings, registry: Registry, flagged_ids: list[str]) -> str | None:
    """The newest dataset that superseded one the flagged versions were trained on; None when erasures left none."""
    erased = {d for version_id in flagged_ids
              for d in (registry.get(version_id).trained_on_erased or {}).get("datasets", [])}
    current = {current_dataset(settings.datasets_dir, dataset_id) for dataset_id in erased}
    newest = [m["id"] for m in list_datasets(settings.datasets_dir) if m["id"] in current]
    return newest[-1] if newest else None


def follow_up(settings: Settings, store: Store, flagged_ids: list[str], actor: str) -> str | None:
    """With ``erasure_followup = "retrain"``, queue a retrain job for the versions an erasure flagged and return
    its id (the same job on a rerun for the same erasure); None under "report", when nothing was flagged, or when
    no cleaned dataset is left to train on (that is logged)."""
    if settings.erasure_followup == "report" or not flagged_ids:
        return None
    registry = Registry.open(settings, store)
    flags = [registry.get(v).trained_on_erased for v in flagged_ids]
    unflagged = [v for v, flag in zip(flagged_ids, flags) if not flag]
    if unflagged:
        raise ValueError(f"versions {', '.join(unflagged)} are not flagged as trained on erased data: "
                         "flag them first (Registry.flag_trained_on_erased)")
    erasure = max(flags, key=lambda flag: flag["at"])["erasure"]
    trigger = f"retrain after erasure {erasure}"
    with store.session() as session:
        earlier = session.scalar(select(Job.id).where(Job.kind == KIND, Job.trigger == trigger,
                                                      Job.state != "failed").order_by(Job.created_at).limit(1))
    if earlier:
        return earlier
    dataset = retrain_dataset(settings, registry, flagged_ids)
    if dataset is None:
        log.warning("nothing left to retrain on: the erasure emptied every dataset the flagged versions learnt from",
                    extra={"erasure": erasure, "versions": flagged_ids})
        return None
    done = {"skipped": trigger}
    job = jobs.enqueue(store, KIND, trigger, settings.worker_max_attempts, singleton=False, outputs={
        "triage": done, "remedies": done, "synth": {"dataset": dataset, "retrain_after_erasure": erasure}})
    jobs.log(store, job.id, f"queued by {actor}: a candidate from {dataset}, for the versions trained on erased "
                            f"data ({', '.join(flagged_ids)}); it goes through the gates and approval as usual")
    return job.id
