"""Filters that every training example passes before anything is written: pure functions, each counting its drops.

Each filter keeps or drops whole items and returns ``(kept, dropped[, details])``, so ``run_filters`` can chain
them and account for every item that went in. Redaction (``affinage.core.pii``) and decontamination
(``affinage.core.decontamination``) live in the core, as the agent and the gates use them too.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from dataclasses import asdict, dataclass, field, is_dataclass
from typing import Any, TypeVar

from affinage.core.validate import open_unit

T = TypeVar("T")

# --- per-item filters -------------------------------------------------------------------------------------------

def length_ok(text: str, min_chars: int, max_chars: int) -> bool:
    """The stripped text is between ``min_chars`` and ``max_chars`` long, inclusive."""
    if not 0 <= min_chars <= max_chars:
        raise ValueError(f"need 0 <= min_chars <= max_chars, got min_chars={min_chars!r}, max_chars={max_chars!r}")
    return min_chars <= len(text.strip()) <= max_chars


def keep_if(items: Sequence[T], predicate: Callable[[T], bool]) -> tuple[list[T], int]:
    """The items the predicate accepts, in order, and how many it refused: turns a check into a filter step."""
    kept = [item for item in items if predicate(item)]
    return kept, len(items) - len(kept)


def groundedness_at_least(items: Sequence[T], score: Callable[[T], float | None],
                          threshold: float) -> tuple[list[T], int]:
    """Keep items whose groundedness reaches ``threshold``; ``None`` (no claim could be scored) is dropped,
    since an example whose support cannot be shown must not be taught."""
    threshold = open_unit("groundedness threshold", threshold)
    return keep_if(items, lambda item: (value := score(item)) is not None and value >= threshold)


ANONYMOUS = "anonymous"


def cap_per_user(items: Sequence[T], user_key: Callable[[T], Hashable | None], cap: int) -> tuple[list[T], int]:
    """Keep each user's first ``cap`` items in the given order: one account cannot flood a dataset (poisoning).

    Items without a user (``None`` or empty) share the bucket ``ANONYMOUS`` and are capped together; exempting
    them would let unattributed feedback bypass the cap.
    """
    if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
        raise ValueError(f"cap must be a positive integer, got {cap!r}")
    seen: Counter[Hashable] = Counter()
    kept: list[T] = []
    for item in items:
        user = user_key(item) or ANONYMOUS
        seen[user] += 1
        if seen[user] <= cap:
            kept.append(item)
    return kept, len(items) - len(kept)


# --- the pipeline -----------------------------------------------------------------------------------------------

Step = Callable[[list[Any]], tuple]  # items -> (kept, dropped) or (kept, dropped, details)


@dataclass
class FilterReport:
    """How many items went in and came out, and what each named step dropped, in the order the steps ran."""

    items_in: int = 0
    items_out: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)  # a step's third return value, e.g. redaction counts

    def to_json(self) -> dict[str, Any]:
        details = {name: [_plain(v) for v in value] if isinstance(value, list) else _plain(value)
                   for name, value in self.details.items()}
        return {"in": self.items_in, "out": self.items_out, "dropped": dict(self.dropped), "details": details}


def _plain(value: Any) -> Any:
    return asdict(value) if is_dataclass(value) and not isinstance(value, type) else value


def run_filters(items: Sequence[T], steps: Sequence[tuple[str, Step]]) -> tuple[list[T], FilterReport]:
    """Apply the named steps in order, recording each one's drops; the report always adds up.

    A step returns ``(kept, dropped)`` or ``(kept, dropped, details)``; a count that disagrees with what the
    step actually removed is refused, since a report that does not add up is worse than none.
    """
    names = [name for name, _ in steps]
    if len(set(names)) != len(names):
        raise ValueError(f"filter step names must be unique, got {names!r}")
    current = list(items)
    report = FilterReport(items_in=len(current))
    for name, step in steps:
        kept, dropped, *details = step(current)
        if dropped != len(current) - len(kept):
            raise ValueError(f"filter step {name!r} reported {dropped} dropped "
                             f"but went from {len(current)} to {len(kept)} items")
        report.dropped[name] = dropped
        if details:
            report.details[name] = details[0]
        current = list(kept)
    report.items_out = len(current)
    return current, report
