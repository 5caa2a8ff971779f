"""Drift checks on seeded synthetic embeddings, hand-written answers, and (integration) the real embedder."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tuning.drift import (
    DriftResult,
    domain_classifier_auc,
    is_refusal,
    mmd_test,
    output_drift,
    per_topic_drift,
    stale_training_rows,
)

DIM = 16


def unit_rows(rng, count: int, shift: float = 0.0) -> np.ndarray:
    """Gaussian rows, optionally shifted along the first axis, normalised like sentence embeddings."""
    rows = rng.normal(size=(count, DIM))
    rows[:, 0] += shift
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


@pytest.fixture
def rng():
    return np.random.default_rng(7)


# --- mmd_test -----------------------------------------------------------------------------------------------------

def test_same_distribution_is_not_drifted(rng):
    result = mmd_test(unit_rows(rng, 60), unit_rows(rng, 50), permutations=200)
    assert result.p_value > 0.05 and not result.drifted
    assert (result.n_reference, result.n_recent) == (60, 50)


def test_shifted_mean_is_drifted(rng):
    result = mmd_test(unit_rows(rng, 60), unit_rows(rng, 50, shift=1.5), permutations=200)
    assert result.p_value < 0.05 and result.drifted
    assert result.statistic > 0


def test_p_value_is_a_permutation_p_value_with_plus_one(rng):
    far = mmd_test(unit_rows(rng, 30), unit_rows(rng, 30, shift=5.0), permutations=99)
    assert far.p_value == pytest.approx(1 / 100)  # no permutation beats the observed split: (0 + 1) / (99 + 1)
    for seed in range(3):
        p = mmd_test(unit_rows(rng, 20), unit_rows(rng, 20), permutations=49, seed=seed).p_value
        assert 0 < p <= 1 and round(p * 50) == pytest.approx(p * 50)  # a multiple of 1 / (permutations + 1)


def test_identical_rows_give_p_value_one():
    rows = np.ones((4, 3))
    result = mmd_test(rows, rows, permutations=20)
    assert result.p_value == 1.0 and result.statistic == pytest.approx(0.0)


def test_statistic_matches_a_direct_computation(rng):
    x, y = unit_rows(rng, 7), unit_rows(rng, 5, shift=0.5)
    result = mmd_test(x, y, permutations=1)
    z = np.vstack([x, y])
    d = np.linalg.norm(z[:, None] - z[None], axis=-1)
    sigma = np.median(d[np.triu_indices(12, 1)])
    k = np.exp(-d**2 / (2 * sigma**2))
    kxx, kyy, kxy = k[:7, :7], k[7:, 7:], k[:7, 7:]
    expected = ((kxx.sum() - np.trace(kxx)) / 42 + (kyy.sum() - np.trace(kyy)) / 20 - 2 * kxy.mean())
    assert result.statistic == pytest.approx(expected)
    assert result.bandwidth == pytest.approx(sigma)


def test_mmd_is_seeded_and_serialises(rng):
    x, y = unit_rows(rng, 20), unit_rows(rng, 20, shift=0.3)
    first, second = mmd_test(x, y, seed=3, permutations=100), mmd_test(x, y, seed=3, permutations=100)
    assert first == second
    assert isinstance(first, DriftResult)
    assert json.loads(json.dumps(first.to_json()))["p_value"] == first.p_value


@pytest.mark.parametrize(("reference", "recent", "message"), [
    (np.zeros((1, 4)), np.zeros((3, 4)), "reference needs at least 2 rows, got 1"),
    (np.zeros((3, 4)), np.zeros((1, 4)), "recent needs at least 2 rows, got 1"),
    (np.zeros((3, 4)), np.zeros((3, 5)), "dimension mismatch"),
    (np.zeros(4), np.zeros((3, 4)), "2-D array"),
    (np.array([[0.0, np.nan], [1.0, 1.0]]), np.zeros((3, 2)), "reference has 1 non-finite values"),
    (np.zeros((3, 2)), np.array([[0.0, 1.0], [np.inf, 1.0]]), "recent has 1 non-finite values (first at row 1)"),
])
def test_mmd_rejects_bad_input(reference, recent, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        mmd_test(reference, recent)


def test_mmd_rejects_bad_parameters(rng):
    x = unit_rows(rng, 4)
    with pytest.raises(ValueError, match="permutations must be a positive integer, got 0"):
        mmd_test(x, x, permutations=0)
    with pytest.raises(ValueError, match="alpha must be in"):
        mmd_test(x, x, alpha=1.5)


# --- domain classifier --------------------------------------------------------------------------------------------

def test_domain_classifier_auc_near_half_without_drift(rng):
    assert abs(domain_classifier_auc(unit_rows(rng, 100), unit_rows(rng, 100)) - 0.5) < 0.15


def test_domain_classifier_auc_high_with_drift(rng):
    assert domain_classifier_auc(unit_rows(rng, 100), unit_rows(rng, 100, shift=3.0)) > 0.8


def test_domain_classifier_needs_a_row_per_fold(rng):
    with pytest.raises(ValueError, match="recent needs at least 5 rows, got 3"):
        domain_classifier_auc(unit_rows(rng, 10), unit_rows(rng, 3))
    with pytest.raises(ValueError, match="folds must be at least 2, got 1"):
        domain_classifier_auc(unit_rows(rng, 10), unit_rows(rng, 10), folds=1)


# --- per topic ----------------------------------------------------------------------------------------------------

def test_per_topic_flags_the_shifted_topic_and_reports_new_ones(rng):
    reference = np.vstack([unit_rows(rng, 40), unit_rows(rng, 40)])
    reference_topics = ["billing"] * 40 + ["login"] * 40
    recent = np.vstack([unit_rows(rng, 30), unit_rows(rng, 30, shift=1.5), unit_rows(rng, 20)])
    recent_topics = ["billing"] * 30 + ["login"] * 30 + ["sso"] * 20
    report = per_topic_drift(reference, recent, reference_topics, recent_topics, permutations=200)
    assert list(report) == ["billing", "login", "sso"]
    assert not report["billing"].test.drifted
    assert report["login"].test.drifted
    sso = report["sso"]
    assert (sso.share_reference, sso.share_recent, sso.n_reference, sso.n_recent) == (0.0, 0.25, 0, 20)
    assert sso.test is None and sso.share_shift == 0.25
    assert report["billing"].share_reference == 0.5 and report["billing"].share_recent == pytest.approx(30 / 80)
    assert json.loads(json.dumps({k: v.to_json() for k, v in report.items()}))["sso"]["test"] is None


def test_per_topic_skips_tests_below_min_rows(rng):
    report = per_topic_drift(unit_rows(rng, 10), unit_rows(rng, 4), ["a"] * 10, ["a"] * 4, min_rows=5)
    assert report["a"].test is None and report["a"].share_recent == 1.0


def test_per_topic_rejects_mismatched_labels(rng):
    with pytest.raises(ValueError, match="recent_topics has 2 labels for 3 recent rows"):
        per_topic_drift(unit_rows(rng, 3), unit_rows(rng, 3), ["a"] * 3, ["a"] * 2)


# --- output drift -------------------------------------------------------------------------------------------------

ACTIVE = [
    {"answer": "Refunds take five business days.", "citations": ["billing.md#refunds"]},   # 5 words, cited
    {"answer": "I don't know.", "citations": []},                                           # 3 words, refusal
    {"answer": "Open Settings then Export.", "citations": ["export.md#how"]},              # 4 words, cited
    {"answer": "Use the Security tab.", "citations": []},                                   # 4 words
]
CANDIDATE = [
    {"answer": "Refunds take five business days to arrive.", "citations": ["billing.md#refunds"]},  # 7, cited
    {"answer": "I'll escalate this to our support team.", "citations": []},                    # 7, refusal
    {"answer": "I cannot help with that.", "citations": []},                                   # 5, refusal
    {"answer": "To escalate a ticket, open it and press Escalate.", "citations": ["t.md#e"]},  # 9, cited
]


def test_output_drift_exact_numbers():
    report = output_drift(ACTIVE, CANDIDATE)
    assert report["answer_words"] == {"active": 4.0, "candidate": 7.0, "difference": 3.0}
    assert report["refusal_rate"] == {"active": 0.25, "candidate": 0.5, "difference": 0.25}
    assert report["citation_rate"] == {"active": 0.5, "candidate": 0.5, "difference": 0.0}
    assert (report["n_active"], report["n_candidate"]) == (4, 4)


def test_refusal_rule():
    assert is_refusal("I don’t know.") and is_refusal("Let me escalate this for you.")
    assert not is_refusal("I'm not sure, but press Reset.") and not is_refusal("Escalate a ticket from the menu.")


def test_output_drift_rejects_bad_answers():
    with pytest.raises(ValueError, match="active_answers has no answers"):
        output_drift([], CANDIDATE)
    with pytest.raises(ValueError, match=r"candidate_answers\[1\] needs an 'answer' string"):
        output_drift(ACTIVE, [CANDIDATE[0], {"text": "hi"}])
    with pytest.raises(ValueError, match=r"active_answers\[0\]\['citations'\] must be a list"):
        output_drift([{"answer": "x", "citations": "a.md"}], CANDIDATE)


# --- stale training rows ------------------------------------------------------------------------------------------

def test_stale_training_rows_picks_rows_far_from_recent_traffic():
    train = np.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 3.0], [1.0, 1.0, 0.0]])
    recent = np.array([[1.0, 0.1, 0.0], [0.9, 0.0, 0.1]])
    # nearest cosine: row 0 ~0.995, row 1 ~0.0995, row 2 ~0.110, row 3 ~0.774
    assert stale_training_rows(train, recent) == [1, 2]
    assert stale_training_rows(train, recent, threshold=0.8) == [1, 2, 3]
    assert stale_training_rows(train, recent, threshold=-1.0) == []


def test_stale_training_rows_rejects_bad_input():
    with pytest.raises(ValueError, match="threshold must be a cosine similarity in \\[-1, 1\\], got 2"):
        stale_training_rows(np.ones((2, 3)), np.ones((2, 3)), threshold=2)
    with pytest.raises(ValueError, match="recent_embeddings row 1 is all zeros"):
        stale_training_rows(np.ones((2, 3)), np.array([[1.0, 0, 0], [0, 0, 0]]))
    with pytest.raises(ValueError, match="dimension mismatch: train_embeddings rows have 3 values"):
        stale_training_rows(np.ones((2, 3)), np.ones((2, 4)))


# --- real embeddings ----------------------------------------------------------------------------------------------

BILLING = [
    "How do I get a refund for my last invoice?", "Why was my credit card charged twice this month?",
    "Can I change the card used for my subscription?", "Where can I download my invoices?",
    "How do I upgrade my plan to the annual billing?", "What happens if my payment fails?",
    "Can I get a receipt with my company VAT number?", "How do I cancel my subscription and stop payments?",
    "Why did my monthly price go up?", "Do you offer discounts for yearly payment?",
    "How are prorated charges calculated when I switch plans?", "Can I pay by bank transfer instead of card?",
]
BILLING_PARAPHRASED = [
    "I want my money back for the latest invoice, how?", "My card got billed two times this month, why?",
    "How can I update the credit card for my subscription?", "Where do I find my past invoices to download?",
    "How can I move my plan to yearly billing?", "What if a payment of mine does not go through?",
    "Can receipts include my business VAT number?", "How do I end my subscription so I am not charged?",
    "Why is my monthly fee higher now?", "Is there a discount if I pay for a full year?",
    "How is proration computed when I change plans?", "Is paying by wire transfer possible instead of a card?",
]
LOGIN = [
    "I forgot my password, how do I reset it?", "Why does the login page say my account is locked?",
    "How do I turn on two-factor authentication?", "The sign-in code from my authenticator app is rejected.",
    "Can I log in with Google single sign-on?", "I never received the password reset email.",
    "How do I change the email I use to sign in?", "Why am I logged out every few minutes?",
    "My SSO login redirects to an error page.", "How do I recover my account without my phone?",
    "Can I stay signed in on this device?", "The app keeps asking for my password again.",
]


@pytest.mark.integration
def test_real_embeddings_billing_vs_login_drift_but_paraphrases_do_not(embeddings):
    billing, paraphrased, login = (embeddings.encode(texts) for texts in (BILLING, BILLING_PARAPHRASED, LOGIN))
    assert mmd_test(billing, login, permutations=500).p_value < 0.01
    assert not mmd_test(billing, paraphrased, permutations=500).drifted
    # nearest cross-topic cosine is at most ~0.37 here, nearest paraphrase at least ~0.71
    assert stale_training_rows(billing, login) == list(range(len(BILLING)))
    assert stale_training_rows(billing, paraphrased) == []
