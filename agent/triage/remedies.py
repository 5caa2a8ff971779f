"""Which remedy a topic gets: counts over its failures, then rules from the cheapest remedy that can work upwards.

* ``knowledge_gap``    — no good passage exists: the documentation team gets the list of questions to answer.
* ``prompt_retrieval`` — a good passage was retrieved but the answer was wrong: put the corrected answer in the
  example bank or tweak the prompt (instant, no training).
* ``behaviour``        — retrieval was confident, yet the failures persist (tone, format, refusals, invented facts,
  or failures that go on after a correction was added to the example bank): candidates for fine-tuning.

Pure functions over plain values, so the rules are tested against hand-made numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from affinage.core.timeutil import as_utc
from affinage.core.validate import open_unit
from agent.triage.failures import Failure, Fix

REMEDIES = ("knowledge_gap", "prompt_retrieval", "behaviour")


@dataclass(frozen=True)
class TopicStats:
    """Counts over one topic's failures; each count is of failures (interactions), so at most ``count``."""

    count: int = field(metadata={"help": "failures in the topic"})
    users: int = field(default=1, metadata={"help": "distinct users who hit them (no user counts as one)"})
    weak: int = field(default=0, metadata={"help": "failures with weak or no retrieval, or an abstention"})
    negative: int = field(default=0, metadata={"help": "failures rated down or corrected"})
    corrected: int = field(default=0, metadata={"help": "failures with a written correction"})
    ungrounded: int = field(default=0, metadata={"help": "failures whose answer the passages did not support"})
    refusals: int = field(default=0, metadata={"help": "failures whose answer refused"})
    style: int = field(default=0, metadata={"help": "failures with feedback about tone or format"})
    behaviour: int = field(default=0, metadata={"help": "failures that are ungrounded, refusals or style complaints"})
    after_fix: int = field(default=0, metadata={
        "help": "failures that happened after a correction-derived example for the topic was in the example bank"})
    mean_top_score: float | None = field(default=None, metadata={
        "help": "mean best-passage score over failures that retrieved anything"})

    def __post_init__(self) -> None:
        if not isinstance(self.count, int) or self.count < 1:
            raise ValueError(f"count must be a positive integer, got {self.count!r}")
        for name in ("users", "weak", "negative", "corrected", "ungrounded", "refusals", "style", "behaviour",
                     "after_fix"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 0 <= value <= self.count:
                raise ValueError(f"{name} must be an integer in [0, count={self.count}], got {value!r}")

    def share(self, name: str) -> float:
        """``name``'s count as a share of the topic's failures."""
        return getattr(self, name) / self.count


def topic_stats(failures: Sequence[Failure], fixes: Sequence[Fix] = ()) -> TopicStats:
    """The statistics ``suggest_remedy`` reads, for one topic's failures and the fixes that belong to it."""
    if not failures:
        raise ValueError("a topic needs at least one failure")
    first_fix = min((as_utc(f.created_at) for f in fixes), default=None)
    scores = [s for s in (f.top_score for f in failures) if s is not None]
    return TopicStats(
        count=len(failures),
        users=len({f.user for f in failures}),
        weak=sum(f.weak for f in failures),
        negative=sum(f.negative for f in failures),
        corrected=sum(f.corrected for f in failures),
        ungrounded=sum("ungrounded" in f.kinds for f in failures),
        refusals=sum("refusal" in f.kinds for f in failures),
        style=sum(f.style_complaint for f in failures),
        behaviour=sum(f.behaviour for f in failures),
        after_fix=0 if first_fix is None else sum(as_utc(f.created_at) > first_fix for f in failures),
        mean_top_score=sum(scores) / len(scores) if scores else None,
    )


@dataclass(frozen=True)
class RemedyRules:
    """Thresholds for ``suggest_remedy``."""

    gap_share: float = field(default=0.5, metadata={
        "help": "share of failures with weak/no retrieval or an abstention from which a topic is a knowledge gap"})
    after_fix_min: int = field(default=2, metadata={
        "help": "failures after a correction-derived example existed from which the instant fix has not held"})
    persist_min_failures: int = field(default=3, metadata={"help": "failures that make a behaviour persistent"})
    persist_min_users: int = field(default=2, metadata={"help": "distinct users that make a behaviour persistent"})
    behaviour_share: float = field(default=0.5, metadata={
        "help": "share of ungrounded answers, refusals and tone/format complaints from which they dominate"})

    def __post_init__(self) -> None:
        for name in ("gap_share", "behaviour_share"):
            open_unit(name, getattr(self, name))
        for name in ("after_fix_min", "persist_min_failures", "persist_min_users"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")


def suggest_remedy(stats: TopicStats, rules: RemedyRules = RemedyRules()) -> tuple[str, str]:
    """The remedy key (one of ``REMEDIES``) for a topic and a one-line reason, by these rules, first match wins:

    1. ``knowledge_gap`` when at least ``gap_share`` of the failures had weak or no retrieval or abstained: no
       good passage exists, and neither a prompt nor training can invent one.
    2. ``behaviour`` when ``after_fix_min`` or more failures came after a correction-derived example for the topic
       was already in the example bank: the instant fix was tried and did not hold.
    3. ``behaviour`` when the failures persist — ``persist_min_failures`` or more from ``persist_min_users`` or
       more users — and ungrounded answers, refusals and tone/format complaints make up at least
       ``behaviour_share`` of them, although retrieval was confident (rule 1 did not fire).
    4. ``prompt_retrieval`` otherwise: a passage was there but the answer went wrong, and nothing cheap has been
       tried yet — add the corrected answer to the example bank or tweak the prompt. (Thumbs-down and corrections
       alone land here however many there are: the correction *is* the cheap fix, until rule 2 says it failed.)
    """
    count = stats.count
    if stats.share("weak") >= rules.gap_share:
        return "knowledge_gap", (f"{stats.weak} of {count} failures had weak or no retrieval or abstained"
                                 f"{_score_note(stats)}: no good passage exists — document the answers")
    if stats.after_fix >= rules.after_fix_min:
        return "behaviour", (f"{stats.after_fix} of {count} failures came after a correction was added to the "
                             f"example bank: the instant fix did not hold — a fine-tuning candidate")
    if (count >= rules.persist_min_failures and stats.users >= rules.persist_min_users
            and stats.share("behaviour") >= rules.behaviour_share):
        return "behaviour", (f"retrieval was confident{_score_note(stats)}, yet {stats.behaviour} of {count} "
                             f"failures from {stats.users} users are {_behaviour_kinds(stats)} — a fine-tuning "
                             f"candidate")
    confident = count - stats.weak
    fix = "add the corrected answer to the example bank" if stats.corrected else "add a curated example"
    return "prompt_retrieval", (f"retrieval was confident in {confident} of {count} failures{_score_note(stats)} "
                                f"but the answer went wrong: {fix} or tweak the prompt")


def _score_note(stats: TopicStats) -> str:
    return "" if stats.mean_top_score is None else f" (mean best passage {stats.mean_top_score:.2f})"


def _behaviour_kinds(stats: TopicStats) -> str:
    parts = [(stats.ungrounded, "ungrounded"), (stats.refusals, "refusals"), (stats.style, "tone/format complaints")]
    named = [f"{name} ({n})" for n, name in sorted(parts, key=lambda p: -p[0]) if n]
    return ", ".join(named) or "behaviour failures"
