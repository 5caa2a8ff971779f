"""The gates' statistical tests against values computed by hand (closed forms noted beside each)."""

import math

import pytest

from tuning.gate_tests import (improves, mean_difference_interval, mean_not_worse, rate_not_worse, rate_within_limit,
                               split_alpha, wilson)


def test_wilson_interval_matches_the_closed_form():
    # z = 1.959964; 2 of 10: centre (0.2 + z²/20) / (1 + z²/10) = 0.28326, half z·sqrt(0.016 + z²/400) / 1.38415
    low, high = wilson(2, 10)
    assert low == pytest.approx(0.05668, abs=1e-5) and high == pytest.approx(0.50984, abs=1e-5)
    low, high = wilson(0, 40)  # upper bound z²/40 / (1 + z²/40) = 0.08762
    assert low == 0.0 and high == pytest.approx(0.08762, abs=1e-5)
    assert wilson(0, 0) == (0.0, 1.0)


def test_bonferroni_splits_the_level():
    assert split_alpha(0.05, 10) == pytest.approx(0.005)
    with pytest.raises(ValueError, match="got 0"):
        split_alpha(0.05, 0)


def test_mcnemar_counts_only_discordant_pairs():
    # worse on 3 probes, better on 1, the rest alike: P(Bin(4, 1/2) >= 3) = 5/16
    outcome = rate_not_worse([0, 0, 0, 1, 1, 0], [1, 1, 1, 0, 1, 0], alpha=0.05)
    assert outcome.p_value == pytest.approx(5 / 16) and outcome.passed
    assert outcome.estimate == pytest.approx(4 / 6)
    # worse on 6 probes, never better: (1/2)^6 = 0.015625, below 0.05 but not below 0.01
    worse = rate_not_worse([False] * 8, [True] * 6 + [False] * 2, alpha=0.05)
    assert worse.p_value == pytest.approx(0.015625) and not worse.passed
    assert rate_not_worse([False] * 8, [True] * 6 + [False] * 2, alpha=0.01).passed
    # the same misses on both sides are no evidence at all
    same = rate_not_worse([True] * 5 + [False] * 5, [True] * 5 + [False] * 5, alpha=0.05)
    assert same.p_value == 1.0 and same.passed
    with pytest.raises(ValueError, match="4 and 3"):
        rate_not_worse([True] * 4, [True] * 3, alpha=0.05)


def test_an_absolute_limit_fails_on_evidence_of_exceeding_it():
    # 2 leaks in 10 against 1/5: P(Bin(10, 0.2) >= 2) = 1 - 0.8^10 - 10·0.2·0.8^9 = 0.6241904
    at_limit = rate_within_limit([True] * 2 + [False] * 8, limit=0.2, alpha=0.05)
    assert at_limit.p_value == pytest.approx(0.6241904, abs=1e-7) and at_limit.passed
    # 20 of 40 (one leak in two) against 1/5: far above it
    half = rate_within_limit([True, False] * 20, limit=0.2, alpha=0.05)
    assert half.p_value < 1e-4 and not half.passed
    assert not rate_within_limit([True], limit=0.0, alpha=0.05).passed
    assert rate_within_limit([False] * 3, limit=0.0, alpha=0.05).passed
    with pytest.raises(ValueError, match="got 1.5"):
        rate_within_limit([True], limit=1.5, alpha=0.05)


def test_paired_non_inferiority_by_hand():
    # differences -0.1, 0, -0.1 shifted by the tolerance: -0.08, 0.02, -0.08; mean -0.04667, sd 0.05774, se 0.03333,
    # t = -1.4 on 2 df, whose CDF is 1/2 + t / (2·sqrt(2 + t²)): 0.148237
    outcome = mean_not_worse([0.5, 0.6, 0.7], [0.4, 0.6, 0.6], tolerance=0.02, alpha=0.05)
    assert outcome.p_value == pytest.approx(0.5 - 1.4 / (2 * math.sqrt(3.96)), abs=1e-6) and outcome.passed
    assert outcome.estimate == pytest.approx(-1 / 15)
    # interval: mean ± t(0.975, 2) · sd / sqrt(3), t(0.975, 2) = 4.302653
    low, high = outcome.low, outcome.high
    assert low == pytest.approx(-1 / 15 - 4.302653 * 0.057735 / math.sqrt(3), abs=1e-5)
    assert high == pytest.approx(-1 / 15 + 4.302653 * 0.057735 / math.sqrt(3), abs=1e-5)
    # a constant loss beyond the tolerance is certain; a constant loss within it is no evidence
    assert not mean_not_worse([0.5] * 4, [0.3] * 4, tolerance=0.02, alpha=0.05).passed
    assert mean_not_worse([0.5] * 4, [0.49] * 4, tolerance=0.02, alpha=0.05).p_value == 1.0
    assert mean_difference_interval([0.3]) == (-1.0, 1.0)


def test_improvement_needs_a_significant_gain_and_the_margin():
    # gains 0.5, 0.4, 0.4: mean 0.43333, sd 0.057735, se 0.033333, t = 13.0 on 2 df: p = 1/2 - 13 / (2·sqrt(171))
    outcome = improves([0.0, 0.1, 0.2], [0.5, 0.5, 0.6], margin=0.05, alpha=0.05)
    assert outcome.p_value == pytest.approx(0.5 - 13 / (2 * math.sqrt(171)), abs=1e-6) and outcome.passed
    assert not improves([0.0, 0.1, 0.2], [0.5, 0.5, 0.6], margin=0.5, alpha=0.05).passed  # below the margin
    noisy = improves([0.0, 0.5, 0.3], [0.4, 0.2, 0.5], margin=0.05, alpha=0.05)  # gains 0.4, -0.3, 0.2: not proven
    assert noisy.estimate == pytest.approx(0.1) and not noisy.passed
    assert not improves([], [], margin=0.05, alpha=0.05).passed
    assert not improves([0.1], [0.9], margin=0.05, alpha=0.05).passed  # one question proves nothing
