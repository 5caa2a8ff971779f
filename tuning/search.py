"""The candidate search's space and study: parse and check a declared search space before anything trains, turn an
Optuna trial into run configs, and keep the study on disk so a resumed cycle continues it.

A space maps a hyperparameter to ``{low, high[, log][, step]}`` (both integers: an integer range) or to
``{choices = [...]}``. A name is a ``RunConfig`` field (``tuning.config``) or ``method``, whose choices may also be
``sft+dpo``: SFT, then DPO on the same dataset's pairs continuing that SFT adapter. ``target_modules`` choices are
``all-linear`` or comma-separated module names. Every end of a range and every choice is checked as a run config
with the worker's base config, so a space that names a bad value is refused with that value before any training.

Optuna's TPE sampler, seeded, with the gates as a constraint (``Trial.set_constraint``: a candidate that fails a
gate is infeasible): with
fewer trials than its start-up count (10) it samples the space independently at random, which for the 2-3
candidates a CPU affords spreads them as well as a grid would without a grid's fixed corners; with a GPU's larger
budget the same study goes on to model which configs gain most.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, fields
from pathlib import Path

from affinage.core.settings_loop import METHODS
from tuning.config import RunConfig, read_config_file

SFT_THEN_DPO = "sft+dpo"
SEARCH_METHODS = (*METHODS, SFT_THEN_DPO)
DEFAULT_SPACE = Path(__file__).resolve().parent / "search_space.toml"
# settings a user might expect to search that are not training knobs, and why they are refused
NOT_SEARCHABLE = {
    "injection_hardening": "a synth setting (hardened copies are written into the dataset): searching it would need "
                           "a dataset per candidate, and the gates' held-out set comes from that same synth run",
    "seed": "the search varies configs, not luck: set seed in worker_train_config",
}


@dataclass(frozen=True)
class Param:
    """One searched hyperparameter: a range or a list of choices."""

    name: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple = ()

    def points(self) -> tuple:
        """The values that bound it: each choice, or both ends of the range."""
        return self.choices or (self.low, self.high)

    def integer(self) -> bool:
        return all(isinstance(v, int) and not isinstance(v, bool) for v in (self.low, self.high))

    def suggest(self, trial):
        if self.choices:
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.integer():
            return trial.suggest_int(self.name, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high), log=self.log, step=self.step)


@dataclass(frozen=True)
class Space:
    params: tuple[Param, ...]
    source: str

    def values(self, trial, base: dict) -> dict:
        """The base config's values with the trial's choices over them."""
        return {**base, **{p.name: field_value(p.name, p.suggest(trial)) for p in self.params}}


def field_value(name: str, value):
    """A choice as the run config takes it: ``target_modules = "q_proj,v_proj"`` is a list."""
    if name == "target_modules" and isinstance(value, str) and value != "all-linear":
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def read_space(path: Path | None) -> tuple[dict, str]:
    """The declared space (TOML or JSON) and where it came from; no path: the bundled default."""
    path = path or DEFAULT_SPACE
    if not path.is_file():
        raise ValueError(f"search_space file not found: {path}")
    return read_config_file(path) if path.suffix == ".json" else tomllib.loads(path.read_text(encoding="utf-8")), \
        str(path)


def parse_param(name: str, spec, source: str) -> Param:
    """One entry of the space, refused with a one-line reason naming the value."""
    where = f"search space {source}: {name}"
    known = {f.name for f in fields(RunConfig)}
    if name in NOT_SEARCHABLE:
        raise ValueError(f"{where} cannot be searched: {NOT_SEARCHABLE[name]}")
    if name not in known:
        raise ValueError(f"{where} is not a known hyperparameter (a run-config field: {', '.join(sorted(known))})")
    if not isinstance(spec, dict) or not ({"choices"} <= set(spec) or {"low", "high"} <= set(spec)):
        raise ValueError(f"{where} = {spec!r}: give {{low, high}} or {{choices}}; a fixed value belongs in "
                         "worker_train_config")
    extra = sorted(set(spec) - ({"choices"} if "choices" in spec else {"low", "high", "log", "step"}))
    if extra:
        raise ValueError(f"{where}: unknown keys {', '.join(extra)}")
    if "choices" in spec:
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise ValueError(f"{where}: choices = {choices!r} is empty; list at least one value")
        if any(not isinstance(c, (str, int, float, bool)) for c in choices):
            raise ValueError(f"{where}: choices = {choices!r}: each choice is a string, number or boolean")
        return Param(name, choices=tuple(choices))
    low, high, log, step = spec["low"], spec["high"], spec.get("log", False), spec.get("step")
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in (low, high)):
        raise ValueError(f"{where}: low = {low!r} and high = {high!r} must be numbers")
    if low > high:
        raise ValueError(f"{where}: the range is empty (low {low!r} > high {high!r})")
    if log and low <= 0:
        raise ValueError(f"{where}: a log range needs low > 0 (got {low!r})")
    if step is not None and (isinstance(step, bool) or not isinstance(step, (int, float)) or step <= 0 or log):
        raise ValueError(f"{where}: step = {step!r} must be a positive number, and not with log")
    return Param(name, low, high, bool(log), step)


def parse_space(data: dict, source: str, base: dict, method: str) -> Space:
    """The space, after checking each end and each choice as a run config over ``base`` (the worker's config
    values) with ``method`` where the space does not choose one."""
    if not data:
        raise ValueError(f"search space {source} is empty: declare at least one hyperparameter")
    space = Space(tuple(parse_param(name, spec, source) for name, spec in data.items()), source)
    for param in space.params:
        for point in param.points():
            values = {**base, "method": method, param.name: field_value(param.name, point)}
            try:
                for step_method, step_values in recipe(values):
                    RunConfig(**{**step_values, "method": step_method}).resolved()
            except (ValueError, TypeError) as error:
                raise ValueError(f"search space {source}: {param.name} = {point!r}: {error}") from None
    return space


def recipe(values: dict) -> list[tuple[str, dict]]:
    """The training runs of one candidate, in order: one, or SFT then DPO for ``sft+dpo`` (the DPO run continues
    the SFT adapter and takes its own method's default learning rate, which is a quarter of SFT's)."""
    method = values.get("method", "sft")
    if method not in SEARCH_METHODS:
        raise ValueError(f"method {method!r} is not one of {', '.join(SEARCH_METHODS)}")
    if method != SFT_THEN_DPO:
        return [(method, values)]
    return [("sft", {**values, "method": "sft"}),
            ("dpo", {**{k: v for k, v in values.items() if k != "learning_rate"}, "method": "dpo", "packing": None})]


def load_space(path: Path | None, base: dict, method: str) -> Space:
    data, source = read_space(path)
    return parse_space(data, source, base, method)


def open_study(path: Path, name: str, seed: int):
    """The study ``name`` in the journal file ``path`` (Optuna's append-only log: no schema to create, unlike its
    SQLite storage, which takes a second to open the first time), created or continued; its sampler is seeded with
    ``seed`` plus the trials already there, so a resumed study does not ask for its first trials' configs again."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    path.parent.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(study_name=name, storage=JournalStorage(JournalFileBackend(str(path))),
                                direction="maximize", load_if_exists=True)
    study.sampler = optuna.samplers.TPESampler(seed=seed + len(study.trials))  # reads each trial's constraints
    return study


def rerun_interrupted(study) -> list[int]:
    """Trials a crashed attempt left running are failed and asked again with the same values, so the rerun finds
    that attempt's candidate (or its training checkpoints) instead of training another config."""
    from optuna.trial import TrialState

    interrupted = [t for t in study.trials if t.state == TrialState.RUNNING]
    for trial in interrupted:
        study.tell(trial.number, state=TrialState.FAIL)
        study.enqueue_trial(trial.params, user_attrs={"rerun_of": trial.number})
    return [t.number for t in interrupted]


def starting_point(space: Space, config: RunConfig) -> dict:
    """The worker's own config where the space allows it: the first trial, so the search never starts from a worse
    config than the single candidate a cycle trained before."""
    point = {}
    for param in space.params:
        value = getattr(config, param.name)
        if param.name == "target_modules" and isinstance(value, list):
            value = ",".join(value)
        if param.choices and value in param.choices or not param.choices and isinstance(value, (int, float)) \
                and not isinstance(value, bool) and param.low <= value <= param.high:
            point[param.name] = value
    return point


def held_out_gain(report: dict) -> float | None:
    """The candidate's held-out token-F1 minus the active version's (paraphrases of the failures it was trained
    for, never trained on), from a gate report; None when there were no held-out paraphrases."""
    sides = [(report.get("measures") or {}).get(side, {}).get("target") for side in ("active", "candidate")]
    if all(sides):
        return round(sides[1]["token_f1"] - sides[0]["token_f1"], 4)
    check = next((c for c in report.get("checks", []) if c["name"] == "target token_f1"), None)
    return round(check["after"] - check["before"], 4) if check and check["before"] is not None else None
