"""Gate checks as data: each compares a candidate's figure with the active version's (or a limit) and says why."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Check:
    gate: str  # regression | forgetting | safety
    name: str  # what was measured, e.g. "golden token-F1"
    before: float | None  # the active version's figure (None when only a limit applies)
    after: float  # the candidate's figure
    threshold: float  # the bound ``after`` had to meet
    rule: str  # the bound in words, for the report
    passed: bool

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


def verdict(checks: list[Check]) -> bool:
    """Every check passed (and there was at least one)."""
    return bool(checks) and all(c.passed for c in checks)
