"""The canary's live comparison: for each guarded bad-outcome rate, an always-valid confidence sequence for its rise on
the canary arm (canary minus active), the decision it drives (roll back, advance, promote, wait) and the trajectory
the console plots. Pure: counts in, figures out.

The sequence is the mixture SPRT (mSPRT) of Johari, Pekelis and Walsh, "Always valid inference" (2017/2022), with the
normal approximation and a N(0, tau^2) mixing distribution: with d = p_c - p_a and V = p_a(1-p_a)/n_a + p_c(1-p_c)/n_c,
the values theta0 with Lambda(theta0) < 1/alpha are d +/- sqrt(V (V+tau^2)/tau^2 (2 ln(1/alpha) + ln((V+tau^2)/V))).
Its coverage holds however often it is looked at, so the worker may decide at every poll. alpha is shared by all the
signals (Bonferroni: alpha / number of signals each).

No library: confseq 0.0.11 is an sdist needing CMake, a C++ compiler and Boost, savvi pulls cvxpy; this is 10 lines.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

from affinage.core import validate

# the bad outcomes a canary is judged on (per conversation): agent.canary_outcomes.GUARDED
SIGNALS = ("thumbs_down", "correction_submitted", "rephrase", "human_request", "abstained", "output_guard")
ACTIONS = ("rollback", "advance", "promote", "wait")
ARMS = ("active", "canary")


@dataclass(frozen=True)
class ArmOutcomes:
    """One arm's conversations and, per guarded signal, how many of them were bad on it (missing: 0)."""

    conversations: int
    bad: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        validate.at_least("conversations", self.conversations, 0)
        for signal, count in self.bad.items():
            validate.at_least(f"bad[{signal!r}]", count, 0)
            if count > self.conversations:
                raise ValueError(f"bad[{signal!r}] ({count}) cannot exceed the arm's conversations "
                                 f"({self.conversations})")
        object.__setattr__(self, "bad", dict(self.bad))


@dataclass(frozen=True)
class SignalFigures:
    """One signal's comparison: counts, rates, the difference canary - active and its confidence sequence."""

    signal: str
    active_conversations: int
    active_bad: int
    canary_conversations: int
    canary_bad: int
    active_rate: float  # 0.0 for an arm without conversations
    canary_rate: float
    diff: float  # canary_rate - active_rate
    low: float  # the confidence sequence, clipped to [-1, 1]
    high: float
    worse: bool  # low > 0: the canary is significantly worse on this signal
    within: bool  # high < max_degradation: the rise is shown to be smaller than the tolerated degradation


@dataclass(frozen=True)
class Decision:
    """What the live comparison says to do now, why (one line), and the figures behind it."""

    action: str  # one of ACTIONS
    reason: str
    share: int | None  # the share to move to: the next step for "advance", 100 for "promote"; else None
    alpha: float  # each signal's error rate (alpha / number of signals)
    signals: tuple[SignalFigures, ...]

    def as_dict(self) -> dict:
        """JSON-ready: for the rollback flag, the event details and the console."""
        return {"action": self.action, "reason": self.reason, "share": self.share, "alpha": self.alpha,
                "signals": {f.signal: {k: v for k, v in asdict(f).items() if k != "signal"} for f in self.signals}}


@dataclass(frozen=True)
class TrajectoryPoint:
    """The comparison after the first ``conversations`` conversations (``active`` + ``canary``)."""

    conversations: int
    active: int
    canary: int
    signals: tuple[SignalFigures, ...]

    def as_dict(self) -> dict:
        return {"conversations": self.conversations, "active": self.active, "canary": self.canary,
                "signals": {f.signal: {"diff": f.diff, "low": f.low, "high": f.high} for f in self.signals}}


def _variance(bad: int, n: int) -> float:
    # rate smoothed to (bad + 0.5) / (n + 1): at 0 or n bad the plug-in variance is 0 and the interval would collapse
    rate = (bad + 0.5) / (n + 1)
    return rate * (1 - rate) / n


def confidence_sequence(active_bad: int, active_n: int, canary_bad: int, canary_n: int, *, alpha: float,
                        tau: float) -> tuple[float, float, float]:
    """(diff, low, high) for canary rate - active rate, always valid at level 1 - ``alpha`` (mSPRT, mixing N(0, tau^2)).

    An arm without conversations gives diff 0 and the whole range [-1, 1]."""
    validate.in_range("alpha", alpha, 0.0, 0.5, open_low=True, open_high=True)
    validate.in_range("tau", tau, 0.0, math.inf, open_low=True)
    for arm, bad, n in (("active", active_bad, active_n), ("canary", canary_bad, canary_n)):
        validate.at_least(f"{arm}_n", n, 0)
        validate.at_least(f"{arm}_bad", bad, 0)
        if bad > n:
            raise ValueError(f"{arm}_bad ({bad}) cannot exceed {arm}_n ({n})")
    if active_n == 0 or canary_n == 0:
        return 0.0, -1.0, 1.0
    diff = canary_bad / canary_n - active_bad / active_n
    v, t2 = _variance(active_bad, active_n) + _variance(canary_bad, canary_n), tau * tau
    half = math.sqrt(v * (v + t2) / t2 * (2 * math.log(1 / alpha) + math.log((v + t2) / v)))
    return diff, max(-1.0, diff - half), min(1.0, diff + half)


def _checked(max_degradation: float, alpha: float, signals: Sequence[str], tau: float | None) -> float:
    """The checks every entry point shares; the mixing scale (tau, default ``max_degradation``)."""
    validate.in_range("max_degradation", max_degradation, 0.0, 1.0, open_low=True)
    validate.in_range("alpha", alpha, 0.0, 0.5, open_low=True, open_high=True)
    if not signals or len(set(signals)) != len(signals):
        raise ValueError(f"signals must be distinct names, at least one (got {list(signals)!r})")
    return max_degradation if tau is None else validate.in_range("tau", tau, 0.0, math.inf, open_low=True)


def _figures(active: ArmOutcomes, canary: ArmOutcomes, signals: Sequence[str], max_degradation: float, alpha: float,
             tau: float) -> tuple[SignalFigures, ...]:
    for arm, outcomes in (("active", active), ("canary", canary)):
        unknown = sorted(set(outcomes.bad) - set(signals))
        if unknown:
            raise ValueError(f"{arm} arm counts signals that are not guarded: {unknown} (guarded: {list(signals)})")
    out = []
    for signal in signals:
        a_bad, c_bad = active.bad.get(signal, 0), canary.bad.get(signal, 0)
        a_n, c_n = active.conversations, canary.conversations
        diff, low, high = confidence_sequence(a_bad, a_n, c_bad, c_n, alpha=alpha, tau=tau)
        out.append(SignalFigures(signal, a_n, a_bad, c_n, c_bad, a_bad / a_n if a_n else 0.0,
                                 c_bad / c_n if c_n else 0.0, diff, low, high, low > 0, high < max_degradation))
    return tuple(out)


def _pts(x: float) -> str:
    return f"{x * 100:+.1f}"


def _describe(f: SignalFigures, level: float) -> str:
    return (f"{f.signal} {f.canary_rate:.1%} ({f.canary_bad}/{f.canary_conversations}) on the canary vs "
            f"{f.active_rate:.1%} ({f.active_bad}/{f.active_conversations}), {_pts(f.diff)} points, "
            f"{level:.1%} sequence [{_pts(f.low)}, {_pts(f.high)}]")


def decide(active: ArmOutcomes, canary: ArmOutcomes, *, share: float, steps: Sequence[int], min_conversations: int,
           max_degradation: float, alpha: float, signals: Sequence[str] = SIGNALS,
           tau: float | None = None, since_step: tuple[int, int] | None = None) -> Decision:
    """The canary's next move from both arms' outcomes so far (``share``: its current percent of conversations).

    rollback: some signal's lower bound > 0 (significantly worse), at any time; wait: either arm has fewer than
    ``min_conversations``; advance: below the last of ``steps``, to the next step above ``share``; promote: at (or
    above) the last step, every signal's upper bound < ``max_degradation`` and, when ``since_step`` (the (active,
    canary) conversations since the share last changed) is given, both arms had ``min_conversations`` at this share,
    so that the evidence of no harm includes the final share; else wait."""
    tau = _checked(max_degradation, alpha, signals, tau)
    validate.in_range("share", share, 0.0, 100.0, open_low=True, open_high=True)
    validate.at_least("min_conversations", min_conversations, 1)
    steps = list(steps)
    if not steps or any(not 0 < s < 100 for s in steps) or steps != sorted(set(steps)):
        raise ValueError(f"steps must be rising shares between 1 and 99 percent, e.g. [10, 50] (got {steps})")
    per_signal = alpha / len(signals)
    figures = _figures(active, canary, signals, max_degradation, per_signal, tau)
    level = 1 - per_signal

    def made(action: str, reason: str, to: int | None = None) -> Decision:
        return Decision(action, reason, to, per_signal, figures)

    worse = [f for f in figures if f.worse]
    if worse:
        f = max(worse, key=lambda f: f.low)
        return made("rollback", f"worse on the canary: {_describe(f, level)} above 0")
    fewest = min(active.conversations, canary.conversations)
    if fewest < min_conversations:
        return made("wait", f"waiting for {min_conversations} conversations per arm (canary {canary.conversations}, "
                            f"active {active.conversations}); no signal worse so far")
    top = max(figures, key=lambda f: f.high)
    if share < steps[-1]:
        to = next(s for s in steps if s > share)
        return made("advance", f"no signal worse after {canary.conversations} canary and {active.conversations} "
                               f"active conversations (highest upper bound: {top.signal} {_pts(top.high)} points): "
                               f"share {share:g}% -> {to}%", to)
    if top.within and since_step is not None and min(since_step) < min_conversations:
        return made("wait", f"no harm shown so far; waiting for {min_conversations} conversations per arm at "
                            f"{share:g}% (active {since_step[0]}, canary {since_step[1]})")
    if top.within:
        return made("promote", f"every signal rose by less than {max_degradation * 100:.1f} points after "
                               f"{canary.conversations} canary and {active.conversations} active conversations "
                               f"(highest upper bound: {_describe(top, level)})", 100)
    return made("wait", f"not yet shown within {max_degradation * 100:.1f} points: {_describe(top, level)}")


def tally(conversations: Iterable[tuple[str, Collection[str]]],
          signals: Sequence[str] = SIGNALS) -> tuple[ArmOutcomes, ArmOutcomes]:
    """(active, canary) outcomes from ``[(arm, bad signals)]``, one item per conversation."""
    n = {arm: 0 for arm in ARMS}
    bad: dict[str, dict[str, int]] = {arm: dict.fromkeys(signals, 0) for arm in ARMS}
    for i, (arm, found) in enumerate(conversations):
        _count(i, arm, found, n, bad)
    return ArmOutcomes(n["active"], bad["active"]), ArmOutcomes(n["canary"], bad["canary"])


def _count(i: int, arm: str, found: Collection[str], n: dict[str, int], bad: dict[str, dict[str, int]]) -> None:
    if arm not in n:
        raise ValueError(f"conversation {i}: arm must be one of {ARMS}, got {arm!r}")
    n[arm] += 1
    for signal in found:
        if signal not in bad[arm]:
            raise ValueError(f"conversation {i}: signal {signal!r} is not guarded (guarded: {list(bad[arm])})")
        bad[arm][signal] += 1


def trajectory(conversations: Sequence[tuple[str, Collection[str]]], *, max_degradation: float, alpha: float,
               signals: Sequence[str] = SIGNALS, tau: float | None = None,
               max_points: int = 100) -> list[TrajectoryPoint]:
    """The comparison every k conversations of the time-ordered ``[(arm, bad signals)]`` (k: at most ``max_points``
    points, the last one after every conversation), each signal at alpha / number of signals as ``decide`` uses."""
    tau = _checked(max_degradation, alpha, signals, tau)
    validate.at_least("max_points", max_points, 1)
    total = len(conversations)
    k = max(1, math.ceil(total / max_points))
    n = {arm: 0 for arm in ARMS}
    bad: dict[str, dict[str, int]] = {arm: dict.fromkeys(signals, 0) for arm in ARMS}
    points = []
    for i, (arm, found) in enumerate(conversations):
        _count(i, arm, found, n, bad)
        if (i + 1) % k == 0 or i + 1 == total:
            active, canary = ArmOutcomes(n["active"], bad["active"]), ArmOutcomes(n["canary"], bad["canary"])
            figures = _figures(active, canary, signals, max_degradation, alpha / len(signals), tau)
            points.append(TrajectoryPoint(i + 1, n["active"], n["canary"], figures))
    return points
