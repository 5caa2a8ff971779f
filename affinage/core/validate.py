"""One way to check a number that a caller or a file supplied: a ValueError that names the value and the range."""

from __future__ import annotations

import math


def number(name: str, value: object) -> float:
    """``value`` as a float, refusing strings that are not numbers, None and NaN."""
    try:
        result = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if math.isnan(result):
        raise ValueError(f"{name} must be a number, got {value!r}")
    return result


def in_range(name: str, value: object, low: float, high: float, *, open_low: bool = False,
             open_high: bool = False) -> float:
    """``value`` as a float within [low, high] (an end left open with ``open_low`` / ``open_high``)."""
    result = number(name, value)
    above = result > low if open_low else result >= low
    below = result < high if open_high else result <= high
    if not (above and below):
        interval = f"{'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}"
        raise ValueError(f"{name} must be in {interval}, got {value!r}")
    return result


def unit(name: str, value: object) -> float:
    """A share or a score: [0, 1]."""
    return in_range(name, value, 0.0, 1.0)


def open_unit(name: str, value: object) -> float:
    """A threshold in (0, 1]: 0 would never fire and divides by zero."""
    return in_range(name, value, 0.0, 1.0, open_low=True)


def at_least(name: str, value: int, low: int) -> int:
    """A count or a size with a lower bound."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be at least {low}, got {value!r}")
    return value
