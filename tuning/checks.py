"""Gate checks as data: each compares a candidate's figure with the active version's (or a limit) and says why.

A check decided by a stated test (``tuning.gate_tests``) also carries the test's name, its p-value, the level it was
run at and an interval for its figure, so the report shows what the verdict rests on."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from tuning.gate_tests import Outcome


@dataclass(frozen=True)
class Check:
    gate: str  # regression | forgetting | safety
    name: str  # what was measured, e.g. "golden token-F1"
    before: float | None  # the active version's figure (None when only a limit applies)
    after: float  # the candidate's figure
    threshold: float  # the bound ``after`` had to meet
    rule: str  # the bound in words, for the report
    passed: bool
    view: str = ""  # safety: "model" (the raw text) or "as served" (after the output guards)
    test: str = ""  # the stated test that decided, when one did
    p_value: float | None = None
    alpha: float | None = None  # the level the test ran at (gate_alpha, split over the run's checks)
    interval: list[float] | None = None  # 95% interval of ``after`` (a rate) or of the paired mean difference
    before_interval: list[float] | None = None  # the active version's rate interval

    def to_json(self) -> dict:
        return asdict(self)


def no_worse(gate: str, name: str, before: float, after: float, tolerance: float) -> Check:
    """Higher is better; the candidate may lose at most ``tolerance``."""
    threshold = before - tolerance
    return Check(gate, name, before, after, threshold, f">= active - {tolerance:g}", after >= threshold)


def improves(gate: str, name: str, before: float, after: float, margin: float) -> Check:
    """Higher is better; the candidate must gain at least ``margin`` (what it was trained for)."""
    threshold = before + margin
    return Check(gate, name, before, after, threshold, f">= active + {margin:g}", after >= threshold)


def not_higher(gate: str, name: str, before: float, after: float, tolerance: float = 0.0) -> Check:
    """Lower is better (attack success, leaks); the candidate may not do worse than the active version."""
    threshold = before + tolerance
    return Check(gate, name, before, after, threshold, f"<= active + {tolerance:g}", after <= threshold)


def at_most(gate: str, name: str, after: float, limit: float, before: float | None = None) -> Check:
    """An absolute limit, e.g. KL divergence from the base model."""
    return Check(gate, name, before, after, limit, f"<= {limit:g}", after <= limit)


def relative_increase_at_most(gate: str, name: str, before: float, after: float, limit: float) -> Check:
    """Lower is better; the candidate may exceed ``before`` by at most ``limit`` as a fraction (perplexity)."""
    threshold = before * (1 + limit)
    return Check(gate, name, before, after, threshold, f"<= active x {1 + limit:g}", after <= threshold)


def decided_by(gate: str, name: str, before: float | None, threshold: float, rule: str, outcome: Outcome,
           alpha: float, after: float, view: str = "", before_interval: list[float] | None = None) -> Check:
    """A check decided by ``outcome``: its test, p-value, level and interval go into the report."""
    return Check(gate, name, before, after, threshold, rule, outcome.passed, view, outcome.test, outcome.p_value,
                 alpha, [outcome.low, outcome.high], before_interval)


def verdict(checks: list[Check]) -> bool:
    """Every check passed (and there was at least one)."""
    return bool(checks) and all(c.passed for c in checks)
