"""The canary's sequential test (affinage.core.sequential): the mSPRT confidence sequence against hand-computed values,
the decision rules, the trajectory, bad input, and a seeded simulation of equal arms."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest

from affinage.core.sequential import (
    SIGNALS,
    ArmOutcomes,
    confidence_sequence,
    decide,
    tally,
    trajectory,
)

RULES = {"steps": [10, 50], "min_conversations": 200, "max_degradation": 0.05, "alpha": 0.05}


def arms(active_n: int, active_bad: dict, canary_n: int, canary_bad: dict) -> tuple[ArmOutcomes, ArmOutcomes]:
    return ArmOutcomes(active_n, active_bad), ArmOutcomes(canary_n, canary_bad)


def test_confidence_sequence_matches_the_formula_by_hand():
    # 100/1000 bad on the active arm, 150/1000 on the canary, alpha 0.05, tau 0.05:
    # d = 0.15 - 0.10 = 0.05; smoothed rates 100.5/1001 = 0.100400, 150.5/1001 = 0.150350;
    # V = 0.100400 * 0.899600 / 1000 + 0.150350 * 0.849650 / 1000 = 9.0320e-5 + 1.27745e-4 = 2.18065e-4;
    # V (V + tau^2) / tau^2 = 2.18065e-4 * 2.718065e-3 / 2.5e-3 = 2.37087e-4;
    # 2 ln(1/0.05) + ln((V + tau^2) / V) = 5.991465 + ln(12.46445) = 5.991465 + 2.522880 = 8.514345;
    # half width = sqrt(2.37087e-4 * 8.514345) = sqrt(2.018641e-3) = 0.044929
    diff, low, high = confidence_sequence(100, 1000, 150, 1000, alpha=0.05, tau=0.05)
    assert diff == pytest.approx(0.05)
    assert low == pytest.approx(0.05 - 0.044929, abs=2e-6)
    assert high == pytest.approx(0.05 + 0.044929, abs=2e-6)


def test_zero_variance_is_smoothed_not_collapsed():
    # 0/500 on both arms: the plug-in V is 0; smoothed rate 0.5/501 = 9.98004e-4,
    # V = 2 * 9.98004e-4 * 0.999002 / 500 = 3.98804e-6; V (V + tau^2) / tau^2 = 3.98804e-6 * 1.0015952 = 3.99440e-6;
    # 2 ln 20 + ln((V + tau^2) / V) = 5.991465 + ln(627.874) = 5.991465 + 6.442340 = 12.433805;
    # half width = sqrt(3.99440e-6 * 12.433805) = sqrt(4.96656e-5) = 0.0070474
    diff, low, high = confidence_sequence(0, 500, 0, 500, alpha=0.05, tau=0.05)
    assert diff == 0.0
    assert (low, high) == pytest.approx((-0.0070474, 0.0070474), abs=1e-6)
    # all bad on both arms is the mirror image: the same width
    assert confidence_sequence(500, 500, 500, 500, alpha=0.05, tau=0.05)[2] == pytest.approx(high, rel=1e-9)
    # an arm without conversations: nothing is known
    assert confidence_sequence(0, 0, 3, 10, alpha=0.05, tau=0.05) == (0.0, -1.0, 1.0)
    # a tiny arm: the bounds stay inside the rates' range
    _, low, high = confidence_sequence(0, 1, 1, 1, alpha=0.05, tau=0.05)
    assert (low, high) == (-1.0, 1.0)


def test_interval_shrinks_as_conversations_grow_and_widens_with_smaller_alpha():
    widths = []
    for n in (100, 200, 400, 800, 1600, 3200, 6400, 12800, 51200):
        _, low, high = confidence_sequence(n // 10, n, n // 10, n, alpha=0.05, tau=0.05)
        widths.append(high - low)
    assert all(a > b for a, b in zip(widths, widths[1:]))
    _, low, high = confidence_sequence(100, 1000, 100, 1000, alpha=0.05 / 6, tau=0.05)
    assert high - low > widths[3]  # n = 1000 sits between 800 and 1600; the Bonferroni level is wider
    assert high - low > confidence_sequence(100, 1000, 100, 1000, alpha=0.05, tau=0.05)[2] * 2


def test_rollback_on_a_clearly_worse_canary_even_below_min_conversations():
    active, canary = arms(600, {"thumbs_down": 60}, 60, {"thumbs_down": 30, "rephrase": 4})
    decision = decide(active, canary, share=10, **RULES)
    assert decision.action == "rollback" and decision.share is None
    assert "thumbs_down" in decision.reason and "30/60" in decision.reason and "60/600" in decision.reason
    figures = {f.signal: f for f in decision.signals}
    assert figures["thumbs_down"].worse and figures["thumbs_down"].low > 0
    assert not figures["rephrase"].worse
    assert decision.alpha == pytest.approx(0.05 / len(SIGNALS))
    # the figures use alpha / number of signals
    assert (figures["thumbs_down"].diff, figures["thumbs_down"].low, figures["thumbs_down"].high) == pytest.approx(
        confidence_sequence(60, 600, 30, 60, alpha=0.05 / 6, tau=0.05))
    json.dumps(decision.as_dict())


def test_wait_until_both_arms_have_min_conversations():
    active, canary = arms(1800, {"thumbs_down": 180}, 199, {"thumbs_down": 20})
    decision = decide(active, canary, share=10, **RULES)
    assert decision.action == "wait" and decision.share is None
    assert "200" in decision.reason and "199" in decision.reason


@pytest.mark.parametrize("share, to", [(10, 50), (5, 10), (30, 50), (49.5, 50)])
def test_advance_to_the_next_step_above_the_share(share, to):
    active, canary = arms(1800, {"thumbs_down": 180}, 200, {"thumbs_down": 20})
    decision = decide(active, canary, share=share, **RULES)
    assert decision.action == "advance" and decision.share == to
    assert f"-> {to}%" in decision.reason


@pytest.mark.parametrize("share", [50, 60])
def test_promote_at_the_last_step_when_every_signal_is_within(share):
    bad = {s: 100 for s in SIGNALS}
    active, canary = arms(2000, bad, 2000, bad)
    decision = decide(active, canary, share=share, **RULES)
    assert decision.action == "promote" and decision.share == 100
    assert all(f.within and not f.worse for f in decision.signals)


def test_promotion_needs_min_conversations_at_the_final_share():
    bad = {s: 100 for s in SIGNALS}
    active, canary = arms(2000, bad, 2000, bad)
    decision = decide(active, canary, share=50, since_step=(199, 250), **RULES)
    assert decision.action == "wait" and "200 conversations per arm at 50%" in decision.reason
    assert decide(active, canary, share=50, since_step=(200, 200), **RULES).action == "promote"


def test_wait_at_the_last_step_while_a_signal_may_have_risen_by_delta():
    # over min conversations, not significantly worse, but the upper bound is above 5 points
    active, canary = arms(300, {"thumbs_down": 30}, 300, {"thumbs_down": 36})
    decision = decide(active, canary, share=50, **RULES)
    figures = {f.signal: f for f in decision.signals}
    assert decision.action == "wait" and not figures["thumbs_down"].within
    assert "thumbs_down" in decision.reason and "36/300" in decision.reason


def test_a_smaller_tau_is_used_when_given():
    active, canary = arms(2000, {"thumbs_down": 200}, 2000, {"thumbs_down": 200})
    default = decide(active, canary, share=50, **RULES).signals[0]
    other = decide(active, canary, share=50, tau=0.2, **RULES).signals[0]
    assert other.high != default.high


@pytest.mark.parametrize("change, message", [
    ({"alpha": 0.0}, "alpha"), ({"alpha": 0.5}, "alpha"), ({"max_degradation": 0.0}, "max_degradation"),
    ({"max_degradation": -0.1}, "max_degradation"), ({"min_conversations": 0}, "min_conversations"),
    ({"steps": [50, 10]}, "steps"), ({"steps": []}, "steps"), ({"steps": [10, 100]}, "steps"),
    ({"share": 0}, "share"), ({"share": 100}, "share"), ({"tau": 0.0}, "tau"), ({"signals": ()}, "signals"),
])
def test_decide_rejects_bad_settings_by_name(change, message):
    kwargs = {**RULES, "share": 10, **change}
    active, canary = arms(10, {}, 10, {})
    with pytest.raises(ValueError, match=message):
        decide(active, canary, **kwargs)


def test_bad_counts_are_rejected_by_name():
    with pytest.raises(ValueError, match="conversations"):
        ArmOutcomes(-1)
    with pytest.raises(ValueError, match="thumbs_down"):
        ArmOutcomes(10, {"thumbs_down": -1})
    with pytest.raises(ValueError, match=r"thumbs_down.*\(11\).*\(10\)"):
        ArmOutcomes(10, {"thumbs_down": 11})
    with pytest.raises(ValueError, match="canary_bad"):
        confidence_sequence(1, 10, 11, 10, alpha=0.05, tau=0.05)
    with pytest.raises(ValueError, match="active_n"):
        confidence_sequence(0, -1, 1, 10, alpha=0.05, tau=0.05)
    with pytest.raises(ValueError, match="thumbs_dwon"):
        decide(*arms(10, {}, 10, {"thumbs_dwon": 1}), share=10, **RULES)


def test_tally_and_trajectory():
    rng = np.random.default_rng(3)
    log = [("canary" if rng.random() < 0.3 else "active",
            frozenset(s for s in SIGNALS if rng.random() < 0.1)) for _ in range(1234)]
    active, canary = tally(log)
    assert active.conversations + canary.conversations == 1234
    points = trajectory(log, max_degradation=0.05, alpha=0.05)
    assert len(points) <= 100
    k = math.ceil(1234 / 100)
    assert [p.conversations for p in points[:3]] == [k, 2 * k, 3 * k] and points[-1].conversations == 1234
    last = {f.signal: f for f in points[-1].signals}
    for s in SIGNALS:
        expected = confidence_sequence(active.bad[s], active.conversations, canary.bad[s], canary.conversations,
                                       alpha=0.05 / 6, tau=0.05)
        assert (last[s].diff, last[s].low, last[s].high) == pytest.approx(expected)
    json.dumps([p.as_dict() for p in points])
    assert [p.conversations for p in trajectory(log[:7], max_degradation=0.05, alpha=0.05)] == list(range(1, 8))
    assert trajectory([], max_degradation=0.05, alpha=0.05) == []
    with pytest.raises(ValueError, match="arm"):
        trajectory([("both", frozenset())], max_degradation=0.05, alpha=0.05)
    with pytest.raises(ValueError, match="typo"):
        tally([("active", {"typo"})])


def test_equal_arms_rarely_roll_back_seeded():
    """200 canaries with equal arms, checked every 100 conversations up to 3,000 per arm: the mSPRT bounds the
    chance of ever rolling back at alpha 0.05 (the bench measures about 0.4% with the Settings defaults)."""
    started = time.perf_counter()
    rng = np.random.default_rng(20240522)
    rates = np.array([0.10, 0.03, 0.08, 0.04, 0.12, 0.01])
    rollbacks = 0
    for _ in range(200):
        bad = np.zeros((2, len(SIGNALS)), dtype=np.int64)
        for look in range(1, 31):
            bad += rng.binomial(100, rates, size=(2, len(SIGNALS)))
            n = 100 * look
            active, canary = (ArmOutcomes(n, dict(zip(SIGNALS, map(int, row)))) for row in bad)
            if decide(active, canary, share=50, **RULES).action == "rollback":
                rollbacks += 1
                break
    assert rollbacks <= 4  # 2% at most of 200; the expected count is about 1
    assert time.perf_counter() - started < 3
