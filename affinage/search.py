"""The cycle's search stage: up to ``search_candidates`` candidates, each trained from the cycle's dataset with a
config drawn from ``search_space`` (``tuning.search``) and gated at once; the best that passes every gate, by
held-out gain, is proposed and the others are marked superseded.

The Optuna study lives in ``<home>/runs/search.journal``, named by the dataset, so an attempt that resumes the job
continues it: finished trials are not trained or gated again, a trial a crash interrupted is asked again with the
same values (its candidate, once registered, is adopted; its training resumes from its checkpoints), and a
candidate already gated keeps its report. The search starts no trial that would end past ``cycle_budget_minutes``
from the cycle's start, judged by the slowest trial so far.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Callable

from affinage.core.atomic import atomic_write_text
from affinage.core.memory import gib, measured, release
from affinage.core.settings import Settings
from affinage.core.timeutil import utcnow
from affinage.gating import run_gates
from synth_data.erasure import current_dataset
from tuning.config import RunConfig, load_config, read_config_file
from tuning.registry import Registry
from tuning.search import (held_out_gain, load_space, open_study, recipe, rerun_interrupted,
                           starting_point)
from tuning.train import CONTINUES, train
from tuning.versions import config_summary

Note = Callable[[str], None]
ACTOR = "search"  # who marks the other candidates superseded, in the audit log
MAX_REPEATS = 10  # configs drawn in a row that an earlier trial already had before the space counts as exhausted


def search_stage(settings: Settings, dataset_id: str, started_at: str, note: Note, progress: bool = True) -> dict:
    """Train and gate the cycle's candidates; returns the proposed one (``candidate``, ``passed``, ``failed``,
    ``checks`` as the promotion stage reads them) and every candidate's config, gain and verdict."""
    method = settings.worker_method
    dataset_id = current(settings, dataset_id, note)
    registry = Registry.open(settings)
    base = base_values(settings, registry, method, note)
    space = load_space(settings.search_space, base, method)  # a bad space is refused here, before any training
    budget = settings.cycle_budget_minutes * 60
    elapsed = lambda: (utcnow() - datetime.fromisoformat(started_at)).total_seconds()  # noqa: E731
    study = open_study(settings.home / "runs" / "search.journal", f"search-{dataset_id}", settings.search_seed)
    rerun = rerun_interrupted(study)
    if rerun:
        note(f"trials {', '.join(map(str, rerun))} were interrupted: asked again with the same values")
    if not finished(study):
        left = budget - elapsed()
        if left < settings.search_trial_minutes * 60:
            raise ValueError(f"cycle_budget_minutes = {settings.cycle_budget_minutes:g} leaves {left / 60:.1f} "
                             f"minutes for the search, under one candidate (search_trial_minutes = "
                             f"{settings.search_trial_minutes:g})")
        if not study.trials:
            study.enqueue_trial(starting_point(space, RunConfig(**{**base, "method": method}).resolved()))
    repeats = 0
    while len(finished(study)) < settings.search_candidates and repeats < MAX_REPEATS:
        slowest = max(t.duration.total_seconds() for t in finished(study)) if finished(study) else 0.0
        if slowest and elapsed() + slowest > budget:
            note(f"stopping after {len(finished(study))} candidates: another (~{slowest / 60:.0f} min) would end "
                 f"past cycle_budget_minutes = {settings.cycle_budget_minutes:g}")
            break
        trial = study.ask()
        values = space.values(trial, base)
        if any(t.params == trial.params for t in finished(study)):
            study.tell(trial, state=failed_state())  # the sampler drew a config already tried
            repeats += 1
            continue
        repeats = 0
        run_trial(settings, registry, study, trial, values, dataset_id, note, progress)
    if repeats == MAX_REPEATS:
        note(f"stopping after {len(finished(study))} candidates: the space has no config left that was not tried")
    return conclude(registry, finished(study), note)


def finished(study) -> list:
    from optuna.trial import TrialState

    return [t for t in study.trials if t.state == TrialState.COMPLETE]


def failed_state():
    from optuna.trial import TrialState

    return TrialState.FAIL


def current(settings: Settings, dataset_id: str, note: Note) -> str:
    """The dataset, or the one an erasure replaced it with since the job began."""
    now = current_dataset(settings.datasets_dir, dataset_id)
    if now is None:
        raise ValueError(f"dataset {dataset_id} was erased: every row it held came from erased data")
    if now != dataset_id:
        note(f"dataset {dataset_id} was superseded by {now} after an erasure: training on that")
    return now


def base_values(settings: Settings, registry: Registry, method: str, note: Note) -> dict:
    """``worker_train_config``'s values (checked), which the space varies; an active version flagged as trained on
    erased data is never built upon: candidates start from the base model."""
    load_config(settings.worker_train_config, method)  # refuses unknown keys and bad values, naming them
    values = read_config_file(settings.worker_train_config) if settings.worker_train_config else {}
    values.pop("method", None)
    active = registry.get(registry.active_id()) if registry.active_id() else None
    if method in CONTINUES and active is not None and active.trained_on_erased:
        note(f"the active version {active.id} was trained on erased data: the candidates start from the base model")
        values["start_from"] = "base"
    return values


def run_trial(settings: Settings, registry: Registry, study, trial, values: dict, dataset_id: str, note: Note,
              progress: bool) -> None:
    """Train the trial's candidate from its config ``values`` (each run of its recipe, adopting one registered by an
    earlier attempt), gate it, and tell the study its held-out gain; a candidate that failed a gate is infeasible."""
    trained: list[str] = []
    with measured() as training:
        for method, step in recipe({"method": settings.worker_method, **values}):
            if trained:
                step = {**step, "start_from": trained[-1]}  # SFT then DPO: DPO continues the SFT adapter
            path = settings.home / "runs" / f"search-{dataset_id}" / f"trial-{trial.number}-{method}.json"
            atomic_write_text(path, json.dumps({k: v for k, v in step.items() if k != "method"}, indent=2,
                                               sort_keys=True))
            trained.append(adopt(settings, registry, load_config(path, method), dataset_id, path, note, progress))
            release()  # the trainer, its model and optimizer: freed before the gates load theirs
    trial.set_user_attr("trained", trained)
    with measured() as gating:
        report = gate(settings, registry, trained[-1], progress)
        release()
    peaks = {"train": gib(training["peak_bytes"]), "gate": gib(gating["peak_bytes"])}
    trial.set_user_attr("peak_gib", peaks)
    gain = held_out_gain(report)
    failed = [f"{c['gate']}: {c['name']}" for c in report["checks"] if not c["passed"]]
    trial.set_user_attr("candidate", trained[-1])
    trial.set_user_attr("config", {"method": values.get("method", settings.worker_method), **config_summary(values)})
    trial.set_user_attr("gain", gain)
    trial.set_user_attr("passed", report["passed"])
    trial.set_user_attr("failed", failed)
    trial.set_constraint("gates", 0.0 if report["passed"] else 1.0)  # <= 0: feasible
    study.tell(trial, gain if gain is not None else -1.0)
    note(f"trial {trial.number}: {trained[-1]} " + (f"held-out gain {gain:+.3f}, " if gain is not None else "")
         + ("passed every gate" if report["passed"] else f"failed: {'; '.join(failed)}")
         + f"; peak memory {peaks['train']:.2f} GiB training, {peaks['gate']:.2f} GiB gating")


def adopt(settings: Settings, registry: Registry, config: RunConfig, dataset_id: str, path: Path, note: Note,
          progress: bool) -> str:
    """The version trained from ``dataset_id`` with exactly ``config``: one registered by an earlier attempt, or a
    new one."""
    for version in registry.list():
        if version.manifest.get("config") == config.to_json() and dataset_id in [
                d["id"] for d in version.manifest.get("datasets", [])]:
            note(f"{version.id} was trained with this config by an earlier attempt: using it")
            return version.id
    version = train(settings, config.method, dataset_id, path, progress=progress)
    resumed = version.manifest.get("resumed_from")
    note(f"{version.id}: {config.method}, {version.manifest['metrics']['steps']} steps"
         + (f", resumed from {resumed}" if resumed else ""))
    return version.id


def gate(settings: Settings, registry: Registry, candidate: str, progress: bool) -> dict:
    """The gate report; a candidate gated by an interrupted attempt keeps its own."""
    version = registry.get(candidate)
    if version.state == "candidate":
        return run_gates(settings, candidate, progress=progress)
    return json.loads((version.path / "report.json").read_text(encoding="utf-8"))


def conclude(registry: Registry, trials: list, note: Note) -> dict:
    """Propose the best candidate that passed every gate (by held-out gain) and mark every other version the
    search trained superseded; with none passing, name each candidate's failed checks."""
    if not trials:
        raise ValueError("the search trained no candidate")
    candidates = [{"trial": t.number, "candidate": t.user_attrs["candidate"], "trained": t.user_attrs["trained"],
                   "config": t.user_attrs["config"], "gain": t.user_attrs["gain"], "passed": t.user_attrs["passed"],
                   "failed": t.user_attrs["failed"], "seconds": round(t.duration.total_seconds(), 1),
                   "peak_gib": t.user_attrs.get("peak_gib")} for t in trials]
    rank = lambda c: -1.0 if c["gain"] is None else c["gain"]  # noqa: E731
    passing = [c for c in candidates if c["passed"]]
    best = max(passing, key=rank) if passing else None
    if best is None:
        failed = [f"{c['candidate']}: {'; '.join(c['failed'])}" for c in candidates]
        note("no candidate passed every gate: " + " | ".join(failed))
        shown = max(candidates, key=rank)
    else:
        shown, failed = best, []
        others = [v for c in candidates for v in c["trained"] if v != best["candidate"]]
        for version_id in dict.fromkeys(others):
            registry.supersede(version_id, by=best["candidate"], actor=ACTOR)
        note(f"{best['candidate']} proposed (held-out gain {rank(best):+.3f})"
             + (f"; superseded: {', '.join(dict.fromkeys(others))}" if others else ""))
    report = json.loads((registry.get(shown["candidate"]).path / "report.json").read_text(encoding="utf-8"))
    return {"candidate": shown["candidate"], "passed": best is not None, "failed": failed,
            "checks": report["checks"], "candidates": candidates}
