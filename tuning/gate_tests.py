"""The gates' statistical tests, pure: each decision is a stated test at a stated level, not "no worse on ten".

Direction. A no-worse check fails only on evidence that the candidate is worse (the null hypothesis is "not
worse"), so a candidate that is truly not worse fails it with probability at most its level; the gate run splits
``gate_alpha`` over those checks (Bonferroni: ``split_alpha``), which bounds the chance that a candidate no worse on
anything fails any of them by ``gate_alpha`` (the false-fail rate ``bench/gate_power.py`` measures). The one claim a
candidate must prove, that it improved on what it was trained for, puts the burden the other way (``improves``).

Rates (attack success, misses, links) use exact binomial tests, intervals are Wilson's; mean scores (token-F1,
ROUGE-L, groundedness) use a paired t-test over the same questions, with a t interval for the mean difference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from scipy import stats

LEVEL = 0.95  # the intervals the report shows


@dataclass(frozen=True)
class Outcome:
    test: str  # the test, named for the report
    estimate: float  # the figure judged: the candidate's rate, or the mean difference candidate - active
    low: float  # its interval at LEVEL
    high: float
    p_value: float
    passed: bool


def split_alpha(alpha: float, checks: int) -> float:
    """Bonferroni: each of ``checks`` tests runs at ``alpha / checks``, so together they err at most ``alpha``."""
    if checks < 1:
        raise ValueError(f"checks must be at least 1 (got {checks})")
    return alpha / checks


def wilson(successes: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """Wilson score interval of a rate (``(0, 1)`` when there is nothing to count)."""
    if n == 0:
        return 0.0, 1.0
    z = float(stats.norm.ppf(0.5 + level / 2))
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # none or all: the bound is exactly 0 or 1 (rounding would put the rate just outside its own interval)
    return (0.0 if successes == 0 else max(0.0, centre - half)), (1.0 if successes == n else min(1.0, centre + half))


def _binomial_greater(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p): the exact one-sided p-value."""
    if n == 0 or k == 0:
        return 1.0
    return float(stats.binomtest(k, n, p, alternative="greater").pvalue)


def rate_not_worse(active_bad: Sequence[bool], candidate_bad: Sequence[bool], alpha: float) -> Outcome:
    """Exact one-sided McNemar over paired outcomes (``True`` = bad: the attack worked, the answer missed).

    Only discordant pairs carry evidence: ``worse`` items the candidate got wrong and the active version right,
    ``better`` the reverse. If the candidate is not worse, a discordant pair goes its way with probability at
    least 1/2, so P(Binomial(worse + better, 1/2) >= worse) is the p-value; the check fails when it is below
    ``alpha``."""
    if len(active_bad) != len(candidate_bad):
        raise ValueError(f"paired outcomes differ in length ({len(active_bad)} and {len(candidate_bad)})")
    worse = sum(1 for a, c in zip(active_bad, candidate_bad) if c and not a)
    better = sum(1 for a, c in zip(active_bad, candidate_bad) if a and not c)
    p_value = _binomial_greater(worse, worse + better, 0.5)
    bad = sum(map(bool, candidate_bad))
    return Outcome("exact one-sided McNemar", bad / len(candidate_bad) if candidate_bad else 0.0,
                   *wilson(bad, len(candidate_bad)), p_value, p_value >= alpha)


def rate_within_limit(bad: Sequence[bool], limit: float, alpha: float) -> Outcome:
    """Exact one-sided binomial test against an absolute limit (PII leaks): fails when P(X >= leaks | rate = limit)
    is below ``alpha``, i.e. on evidence that the rate exceeds the limit.

    Why this direction: the other one (pass only when the upper bound is under the limit) fails a version that
    meets the limit most of the time on 40 probes, which breaks the false-fail bound; this one fails a version
    that meets the limit with probability at most ``alpha``, and one well above it (a leak rate of 1/2 against a
    limit of 1/5 on 40 probes) almost surely. The report shows the interval, so a close call is visible."""
    if not 0.0 <= limit <= 1.0:
        raise ValueError(f"limit must be a rate in [0, 1] (got {limit})")
    n, k = len(bad), sum(map(bool, bad))
    if limit == 0.0:
        p_value = 0.0 if k else 1.0
    elif limit == 1.0:
        p_value = 1.0
    else:
        p_value = _binomial_greater(k, n, limit)
    return Outcome("exact one-sided binomial vs limit", k / n if n else 0.0, *wilson(k, n), p_value,
                   p_value >= alpha)


def mean_difference_interval(differences: Sequence[float], level: float = LEVEL) -> tuple[float, float]:
    """Student-t interval of a mean difference; with fewer than two pairs, every difference of scores in [0, 1]."""
    n = len(differences)
    if n < 2:
        return -1.0, 1.0
    mean = sum(differences) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in differences) / (n - 1))
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    return mean - half, mean + half


def _paired_t(differences: list[float], shift: float, alternative: str) -> float:
    """One-sided p-value of the paired t-test that the mean of ``differences`` is ``shift``; a constant difference,
    where the t statistic is undefined, is decided by which side of ``shift`` it lies."""
    if len(differences) < 2:
        return 1.0  # one pair is no evidence either way
    if all(math.isclose(d, differences[0], abs_tol=1e-12) for d in differences):
        mean = differences[0]
        return 0.0 if (mean < shift - 1e-12 if alternative == "less" else mean > shift + 1e-12) else 1.0
    return float(stats.ttest_1samp([d - shift for d in differences], 0.0, alternative=alternative).pvalue)


def _differences(active: Sequence[float], candidate: Sequence[float]) -> list[float]:
    if len(active) != len(candidate):
        raise ValueError(f"paired scores differ in length ({len(active)} and {len(candidate)})")
    return [c - a for a, c in zip(active, candidate)]


def mean_not_worse(active: Sequence[float], candidate: Sequence[float], tolerance: float, alpha: float) -> Outcome:
    """Paired one-sided t-test of non-inferiority (higher scores are better): fails when the mean difference is
    below ``-tolerance`` at level ``alpha`` (null: the candidate loses at most ``tolerance``)."""
    differences = _differences(active, candidate)
    if not differences:
        return Outcome("paired one-sided t-test", 0.0, -1.0, 1.0, 1.0, True)
    p_value = _paired_t(differences, -tolerance, "less")
    return Outcome("paired one-sided t-test", sum(differences) / len(differences),
                   *mean_difference_interval(differences), p_value, p_value >= alpha)


def improves(active: Sequence[float], candidate: Sequence[float], margin: float, alpha: float) -> Outcome:
    """What a candidate was trained for, proven: the paired one-sided t-test that the mean gain exceeds 0 rejects
    at ``alpha`` and the mean gain is at least ``margin``. Testing "gain > margin" instead would ask far more
    questions than a cycle's held-out paraphrases; testing "> 0" alone would pass a gain too small to matter."""
    differences = _differences(active, candidate)
    if not differences:
        return Outcome("paired one-sided t-test (gain > 0) and mean gain >= margin", 0.0, -1.0, 1.0, 1.0, False)
    gain = sum(differences) / len(differences)
    p_value = _paired_t(differences, 0.0, "greater")
    return Outcome("paired one-sided t-test (gain > 0) and mean gain >= margin", gain,
                   *mean_difference_interval(differences), p_value, p_value < alpha and gain >= margin - 1e-12)
