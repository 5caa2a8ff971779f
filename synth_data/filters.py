"""Filters that every training example passes before anything is written: pure functions, each counting its drops.

Each filter keeps or drops whole items and returns ``(kept, dropped[, details])``, so ``run_filters`` can chain
them and account for every item that went in. Redaction (``affinage.core.pii``) and decontamination
(``affinage.core.decontamination``) live in the core, as the agent and the gates use them too.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, is_dataclass
from typing import Any, TypeVar

from affinage.core.validate import at_least, open_unit

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
EVALUATION_KINDS = ("heldout",)  # rows the gates measure with, never trained on: the cap never drops them


def user_cap(failures_per_user: Mapping[Hashable, int], share: float, floor: int) -> int | None:
    """The most failures one user may contribute, or ``None`` when nobody offers more than they may.

    A user may contribute ``max(floor, share x the failures the dataset keeps)``: the cap is the largest ``c`` with
    ``c <= max(floor, share * sum(min(n, c) for each user's n))``. The share is of what the dataset *keeps*, not of
    what was offered, so a flood cannot widen its own allowance: one key with 1,000 failures beside four users with
    10 each gets 13 (counted over what was offered, 260: 87% of the dataset). ``share = 1`` caps nobody. With fewer
    than ``1 / share`` busy users nobody can stay under the share, and ``floor`` decides: it also lets a small team
    (one agent correcting a new workspace) contribute everything it has.
    """
    share, floor = open_unit("max_user_share", share), at_least("min_user_failures", floor, 1)
    counts = [n for n in failures_per_user.values() if n > 0]

    def allowed(c: int) -> bool:  # true from 0 up to the cap, false above it (c - share * kept(c) is convex)
        return c <= max(floor, share * sum(min(n, c) for n in counts) + 1e-9)

    most = max(counts, default=0)
    if allowed(most):
        return None
    low, high = floor, most  # allowed(low), not allowed(high)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if allowed(middle) else (low, middle)
    return low


@dataclass
class CapReport:
    """What the per-user cap did: the cap, and for each user over it the failures kept and dropped and the rows
    dropped by kind. ``user`` is as the log records it (the API key's name or the CLI account), never a customer."""

    share: float
    floor: int
    failures: int  # failures offered (those with a training row)
    cap: int | None  # None: nobody was over it
    users: dict[str, dict[str, Any]] = field(default_factory=dict)


def cap_failures_per_user(items: Sequence[T], *, user: Callable[[T], Hashable | None], failure: Callable[[T], Hashable],
                          kind: Callable[[T], str], when: Callable[[T], Any], share: float,
                          floor: int) -> tuple[list[T], int, CapReport]:
    """Cap what one user feeds a dataset (poisoning defence), counted in failures, keeping each failure whole.

    A failure is the set of items sharing ``failure(item)`` (one logged interaction): its SFT rows, paraphrases,
    pairs and KTO rows are admitted or dropped together, and only failures with a training row count. Each user may
    keep ``user_cap(...)`` failures; one over it keeps their **most recent** ones (largest ``when``, ties by failure
    id), as recent failures reflect the product and documents as they are now; the choice is deterministic and the
    same for every user. Held-out rows (``EVALUATION_KINDS``) are never dropped: they are evaluation, not training,
    and a dropped failure's held-out row stays evaluation only. Items without a user share the bucket ``ANONYMOUS``:
    exempting them would let unattributed feedback bypass the cap. Item order is kept.
    """
    owner: dict[Hashable, str] = {}
    latest: dict[Hashable, Any] = {}
    for item in items:
        if kind(item) not in EVALUATION_KINDS:
            key = failure(item)
            owner.setdefault(key, str(user(item) or ANONYMOUS))
            latest[key] = max(latest[key], when(item)) if key in latest else when(item)
    by_user: dict[str, list[Hashable]] = {}
    for key, name in owner.items():
        by_user.setdefault(name, []).append(key)
    cap = user_cap({name: len(keys) for name, keys in by_user.items()}, share, floor)
    report = CapReport(share=share, floor=floor, failures=len(owner), cap=cap)
    dropped_failures: set[Hashable] = set()
    for name, keys in sorted(by_user.items()):
        if cap is not None and len(keys) > cap:
            ordered = sorted(keys, key=lambda key: (latest[key], str(key)))
            dropped_failures.update(ordered[: len(keys) - cap])
            report.users[name] = {"failures": len(keys), "kept": cap, "dropped": len(keys) - cap, "rows_dropped": {}}
    kept: list[T] = []
    for item in items:
        if kind(item) in EVALUATION_KINDS or failure(item) not in dropped_failures:
            kept.append(item)
        else:
            rows = report.users[owner[failure(item)]]["rows_dropped"]
            rows[kind(item)] = rows.get(kind(item), 0) + 1
    return kept, len(items) - len(kept), report


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
