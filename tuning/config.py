"""The run config: every knob of a training run, documented, validated before anything is loaded."""

from __future__ import annotations

import json
import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from types import UnionType
from typing import get_args, get_origin, get_type_hints

from affinage.core.settings_loop import METHODS

PACKABLE = ("sft", "partial", "full", "qlora")  # methods that train on plain conversations
SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial")
DEFAULT_LEARNING_RATE = {"sft": 2e-4, "qlora": 2e-4, "dpo": 5e-5, "kto": 5e-5, "partial": 5e-5, "full": 2e-5}


@dataclass(frozen=True)
class RunConfig:
    """One training run. ``None`` means "the method's default", resolved by :meth:`resolved`."""

    method: str = "sft"
    # LoRA (sft, dpo, kto, qlora)
    lora_r: int = field(default=16, metadata={"doc": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"doc": "LoRA scaling numerator (scale = alpha / r)."})
    lora_dropout: float = field(default=0.05, metadata={"doc": "Dropout on the LoRA input."})
    target_modules: str | list[str] = field(
        default="all-linear", metadata={"doc": "Module names that get LoRA, or 'all-linear'."})
    # partial
    top_blocks: int = field(default=2, metadata={"doc": "partial: how many of the last transformer blocks train."})
    # optimisation
    learning_rate: float | None = field(default=None, metadata={"doc": "Peak learning rate; default per method."})
    lr_scheduler: str = field(default="cosine", metadata={"doc": f"One of {', '.join(SCHEDULERS)}."})
    warmup_ratio: float = field(default=0.1, metadata={"doc": "Share of steps spent warming the rate up."})
    weight_decay: float = field(default=0.0, metadata={"doc": "AdamW weight decay."})
    epochs: float = field(default=3.0, metadata={"doc": "Passes over the training split."})
    max_steps: int = field(default=-1, metadata={"doc": "Stop after this many optimiser steps (-1: use epochs)."})
    batch_size: int = field(default=2, metadata={"doc": "Sequences (or packed rows) per device per forward pass."})
    grad_accum: int = field(default=2, metadata={"doc": "Batches accumulated per optimiser step (the default 2 x 2 "
                                                         "keeps a step at 4 rows in half the activation memory)."})
    max_length: int = field(default=1024, metadata={"doc": "Longest training sequence in tokens; longer are cut."})
    packing: bool | None = field(
        default=None, metadata={"doc": "Pack conversations padding-free (sft, partial, full, qlora; default on)."})
    seed: int = field(default=42, metadata={"doc": "Seeds data order, initialisation and the validation split."})
    # validation, early stopping, checkpoints
    val_fraction: float = field(default=0.1, metadata={"doc": "Share of rows held out for validation loss."})
    eval_steps: int = field(default=10, metadata={"doc": "Validate every N optimiser steps."})
    save_steps: int = field(default=10, metadata={"doc": "Checkpoint every N steps; a multiple of eval_steps."})
    early_stopping_patience: int = field(
        default=3, metadata={"doc": "Stop after N validations without improvement (0: never)."})
    # preference tuning (dpo, kto)
    beta: float = field(default=0.1, metadata={"doc": "dpo/kto: strength of the pull towards the reference."})
    start_from: str = field(
        default="active", metadata={"doc": "sft/dpo/kto: continue the active LoRA adapter ('active'), so a cycle builds "
                                           "on what the last one taught, train a new one on the base ('base'), or "
                                           "continue a registered LoRA version by id (a search's SFT-then-DPO)."})
    precompute_ref: bool = field(
        default=True, metadata={"doc": "dpo/kto: compute reference log-probs once before training, "
                                        "so no reference forward pass (or reference copy) is kept during it."})
    # hardware
    bf16: bool | None = field(default=None, metadata={"doc": "bf16 mixed precision (default: when a GPU supports it; true is "
                                                         "also taken on a CPU with AVX512-BF16 or AMX)."})
    activation_checkpointing: bool | None = field(
        default=None, metadata={"doc": "Recompute activations in the backward pass instead of keeping them: about a "
                                       "third more compute for a fraction of the memory (default: on without a GPU, "
                                       "so a cycle fits beside the service)."})

    def resolved(self) -> "RunConfig":
        """The config with method defaults filled in, after checking every value and every combination."""
        errors = []
        if self.method not in METHODS:
            errors.append(f"method {self.method!r} is not one of {', '.join(METHODS)}")
        for name in ("lora_r", "lora_alpha", "batch_size", "grad_accum", "max_length", "eval_steps", "save_steps"):
            if getattr(self, name) < 1:
                errors.append(f"{name} must be at least 1 (got {getattr(self, name)})")
        for name, low, high in (("lora_dropout", 0, 1), ("warmup_ratio", 0, 1), ("val_fraction", 0, 0.5)):
            if not low <= getattr(self, name) < high:
                errors.append(f"{name} must be in [{low}, {high}) (got {getattr(self, name)})")
        if self.top_blocks < 1:
            errors.append(f"top_blocks must be at least 1 (got {self.top_blocks})")
        if self.learning_rate is not None and not 0 < self.learning_rate < 1:
            errors.append(f"learning_rate must be in (0, 1) (got {self.learning_rate})")
        if self.lr_scheduler not in SCHEDULERS:
            errors.append(f"lr_scheduler {self.lr_scheduler!r} is not one of {', '.join(SCHEDULERS)}")
        if self.epochs <= 0 and self.max_steps < 1:
            errors.append(f"epochs ({self.epochs}) or max_steps ({self.max_steps}) must be positive")
        if self.early_stopping_patience < 0 or self.beta <= 0:
            errors.append("early_stopping_patience must be >= 0 and beta > 0")
        if self.early_stopping_patience and self.val_fraction and self.save_steps % self.eval_steps:
            errors.append(f"save_steps ({self.save_steps}) must be a multiple of eval_steps ({self.eval_steps}) "
                          "when early stopping keeps the best checkpoint")
        if not isinstance(self.start_from, str) or not self.start_from.strip():
            errors.append(f"start_from must be 'active', 'base' or a version id (got {self.start_from!r})")
        if self.packing and self.method not in PACKABLE:
            errors.append(f"packing=true conflicts with method {self.method!r}: only {', '.join(PACKABLE)} pack")
        if not isinstance(self.target_modules, str) and not (
                self.target_modules and all(isinstance(m, str) and m for m in self.target_modules)):
            errors.append(f"target_modules must be 'all-linear' or a non-empty list of names (got {self.target_modules!r})")
        if errors:
            raise ValueError("bad run config: " + "; ".join(errors))
        return replace(
            self,
            learning_rate=self.learning_rate or DEFAULT_LEARNING_RATE[self.method],
            packing=self.method in PACKABLE if self.packing is None else self.packing,
        )

    def to_json(self) -> dict:
        return asdict(self)


def read_config_file(path: Path) -> dict:
    """The values a TOML or JSON run-config file sets, unchecked."""
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        return json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as error:
        kind = "JSON" if path.suffix == ".json" else "TOML"
        raise ValueError(f"config file {path} is not valid {kind}: {error}") from error


def load_config(path: Path | None, method: str) -> RunConfig:
    """A run config from a TOML or JSON file (unknown keys refused), for ``method``; no file: the defaults."""
    values: dict = {}
    if path is not None:
        values = read_config_file(path)
        known = {f.name for f in fields(RunConfig)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"config file {path}: unknown keys {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        if values.get("method", method) != method:
            raise ValueError(f"config file {path} sets method {values['method']!r} but --method is {method!r}")
    hints = get_type_hints(RunConfig)
    for f in fields(RunConfig):
        if f.name in values and not type_ok(values[f.name], hints[f.name]):
            raise ValueError(f"config file {path}: {f.name} = {values[f.name]!r} is not {type_name(hints[f.name])}")
    return RunConfig(**{**values, "method": method}).resolved()


def type_ok(value, hint) -> bool:
    """Whether a TOML/JSON value fits a field's annotation: a bool is not a number, an int is a float."""
    options = get_args(hint) if isinstance(hint, UnionType) else (hint,)
    for option in options:
        if option is type(None) and value is None:
            return True
        if get_origin(option) is list:
            if isinstance(value, list) and all(type_ok(item, get_args(option)[0]) for item in value):
                return True
        elif option in (int, float) and not isinstance(value, bool):
            if isinstance(value, int) or option is float and isinstance(value, float):
                return True
        elif isinstance(option, type) and isinstance(value, option):
            return True
    return False


def type_name(hint) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", type(None): "null"}
    return " or ".join(names.get(o, "a list of strings" if get_origin(o) is list else str(o))
                       for o in (get_args(hint) if isinstance(hint, UnionType) else (hint,)))


def describe() -> str:
    """Every field with its default and documentation, for ``affinage train --config-help``."""
    return "\n".join(f"{f.name} = {f.default!r}  # {f.metadata.get('doc', '')}" for f in fields(RunConfig)
                     if f.name != "method")
