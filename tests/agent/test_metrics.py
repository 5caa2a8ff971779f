import pytest

from affinage.core.metrics import contains_fact, hit_at_k, percentile, rouge_l, source_matches, token_f1, tokens


def test_tokens_drop_case_punctuation_and_articles():
    assert tokens("The refund, an Answer!") == ["refund", "answer"]


def test_token_f1_by_hand():
    # pred: [refunds, take, 10, days]; ref: [refunds, take, 30, days]; 3 common
    assert token_f1("Refunds take 10 days", "refunds take 30 days") == pytest.approx(0.75)
    assert token_f1("nothing shared", "refunds") == 0.0
    assert token_f1("", "") == 1.0


def test_rouge_l_by_hand():
    # LCS of [a b c d] and [a c d e] (as words w1..) is 3: p=3/4, r=3/4
    assert rouge_l("w1 w2 w3 w4", "w1 w3 w4 w5") == pytest.approx(0.75)
    # LCS 2 of pred len 2 and ref len 4: p=1, r=.5 -> f=2/3
    assert rouge_l("w1 w4", "w1 w2 w3 w4") == pytest.approx(2 / 3)


def test_contains_fact_ignores_case_and_spacing():
    assert contains_fact("Go to  settings >\nsecurity now", "Settings > Security")
    assert not contains_fact("Settings", "Settings > Security")


def test_source_matching_and_hits():
    assert source_matches("kb/billing/refunds.md#annual", "billing/refunds.md#annual")
    assert not source_matches("billing/refunds.md#monthly", "billing/refunds.md#annual")
    assert source_matches("billing/refunds.md#monthly", "billing/refunds.md")
    assert not source_matches("other/refunds.md#annual", "billing/refunds.md#annual")
    cited = ["a.md#x", "b.md#y", "c.md#z"]
    assert [hit_at_k(cited, "c.md#z", k) for k in (1, 2, 3)] == [False, False, True]


def test_percentile_interpolates():
    assert percentile([1, 2, 3, 4], 50) == pytest.approx(2.5)
    assert percentile([5.0], 95) == 5.0
