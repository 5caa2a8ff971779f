import pytest

from agent.detectors import (
    KINDS,
    DetectorConfig,
    InteractionView,
    Signal,
    correction_submitted,
    detect_all,
    human_request,
    output_guard,
    refusal,
    rephrase,
    thumbs_down,
    ungrounded,
    weak_retrieval,
)
from affinage.core.grounding import claim_sentences, groundedness, lexical_support, sentence_support
from affinage.core.text import content_tokens, text_similarity
from affinage.core.prompts import ABSTAIN_MESSAGE

REFUND_PASSAGE = "Annual plans can be refunded within 14 days of purchase."
BUTTON_PASSAGE = "Open Settings > Billing and press Request refund."


def test_signal_rejects_bad_values():
    with pytest.raises(ValueError, match="1.5"):
        Signal("refusal", "x", 1.5)
    with pytest.raises(ValueError, match="bogus"):
        Signal("bogus", "x", 0.5)


def test_content_tokens_drop_stopwords_and_punctuation():
    assert content_tokens("Annual plans are refundable within 30 days!") == [
        "annual", "plans", "refundable", "within", "30", "days"]


def test_lexical_support_by_hand():
    sentence = "Annual plans are refundable within 30 days."
    # claim tokens {annual, plans, refundable, within, 30, days}: 6
    # "Monthly plans are not refunded." shares {plans}: 1/6; REFUND_PASSAGE shares {annual, plans, within, days}: 4/6
    assert lexical_support(sentence, ["Monthly plans are not refunded."]) == pytest.approx(1 / 6)
    assert lexical_support(sentence, ["Monthly plans are not refunded.", REFUND_PASSAGE]) == pytest.approx(4 / 6)
    assert lexical_support(sentence, []) == 0.0
    assert lexical_support("Is it?", [REFUND_PASSAGE]) == 1.0


def test_claim_sentences_drop_citations_questions_fragments_and_refusals():
    answer = ("Annual plans are refundable within 30 days [1]. Open Settings and press Request refund "
              "[billing/refunds.md#annual-plans]. Yes.\n1. Would you like me to do anything else? "
              "I don't know about monthly plans.")
    assert claim_sentences(answer) == [
        "Annual plans are refundable within 30 days.", "Open Settings and press Request refund."]


def test_groundedness_is_the_mean_sentence_support():
    answer = "Annual plans are refundable within 30 days [1]. Open Settings and press Request refund [2]. Yes."
    passages = [REFUND_PASSAGE, BUTTON_PASSAGE]
    # sentence 1: 4/6 (see above); sentence 2: {open, settings, press, request, refund} all in BUTTON_PASSAGE: 1
    assert sentence_support(answer, passages) == [
        ("Annual plans are refundable within 30 days.", pytest.approx(2 / 3)),
        ("Open Settings and press Request refund.", 1.0),
    ]
    assert groundedness(answer, passages) == pytest.approx(5 / 6)
    signal = ungrounded(answer, passages, lexical_support, threshold=0.9)
    assert signal.kind == "ungrounded" and signal.strength == pytest.approx(1 / 6)
    assert "Annual plans are refundable" in signal.reason
    assert ungrounded(answer, passages, lexical_support, threshold=0.8) is None


def test_groundedness_of_answers_that_claim_nothing_is_none():
    assert groundedness("", [REFUND_PASSAGE]) is None
    assert groundedness(ABSTAIN_MESSAGE, []) is None
    assert ungrounded(ABSTAIN_MESSAGE, [], lexical_support, 0.5) is None


def test_claims_without_passages_are_fully_ungrounded():
    signal = ungrounded("Annual plans are refundable within 30 days.", [], lexical_support, 0.5)
    assert signal.strength == 1.0


def test_groundedness_uses_the_injected_scorer_and_checks_it():
    answer = "Annual plans are refundable within 30 days. Open Settings and press Request refund."
    assert groundedness(answer, [], lambda sentence, passages: 0.25) == 0.25
    with pytest.raises(ValueError, match="2.0"):
        groundedness(answer, [], lambda sentence, passages: 2.0)
    with pytest.raises(ValueError, match="threshold"):
        ungrounded(answer, [], lexical_support, threshold=1.5)


def test_thumbs_down_strength_is_the_share_of_down_ratings():
    assert thumbs_down(["up", "down", "down"]).strength == pytest.approx(2 / 3)
    assert thumbs_down(["down"]).strength == 1.0
    assert thumbs_down(["up"]) is None
    assert thumbs_down([]) is None
    with pytest.raises(ValueError, match="meh"):
        thumbs_down(["meh"])


def test_correction_counts_only_written_text():
    assert correction_submitted(["", None, "  "]) is None
    signal = correction_submitted([None, "Annual plans are refundable within 30 days."])
    assert signal.strength == 1.0 and "1 correction" in signal.reason


@pytest.mark.parametrize("score, threshold, strength", [
    (0.15, 0.3, 0.5),  # (0.3 - 0.15) / 0.3
    (0.1, 0.4, 0.75),  # (0.4 - 0.1) / 0.4
    (-0.2, 0.3, 1.0),  # clipped
    (None, 0.3, 1.0),  # nothing retrieved
])
def test_weak_retrieval_strength(score, threshold, strength):
    assert weak_retrieval(score, threshold).strength == pytest.approx(strength)


def test_weak_retrieval_quiet_at_or_above_threshold_and_checks_threshold():
    assert weak_retrieval(0.4, 0.4) is None
    assert weak_retrieval(0.9, 0.4) is None
    for bad in (0.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match="threshold"):
            weak_retrieval(0.2, bad)


@pytest.mark.parametrize("answer, strength", [
    (ABSTAIN_MESSAGE, 1.0),
    ("I don't know.", 1.0),
    ("I’m not sure.", 1.0),  # curly apostrophe
    ("Sorry, I can't help with that.", 1.0),
    ("There is no information about SSO in the knowledge base.", 1.0),
    ("This is not covered in the documentation.", 1.0),
    ("The passages don't mention SAML.", 1.0),
    ("I'm not sure, but I can escalate this to a human agent.", 1.0),  # a hand-over is still a refusal
    ("Refunds take 5 days. I don't know about monthly plans.", 0.5),  # answered something first
])
def test_refusals(answer, strength):
    assert refusal(answer).strength == strength


@pytest.mark.parametrize("answer", [
    "I don't know why you'd want to, but here is how: open Settings > Export.",  # puzzlement, then an answer
    "I'm not sure, but you can press Shift+S to mark it Solved.",  # a hedge before an answer
    "If you don't know your password, click Forgot password.",
    "Accidental damage is not covered by the warranty.",
    "We store no information about your card beyond its last four digits.",
    "Press Shift+S to mark the ticket as Solved.",
    "",
])
def test_not_refusals(answer):
    assert refusal(answer) is None


def test_text_similarity_by_hand():
    # content tokens {reset, password} on both sides
    assert text_similarity("How do I reset my password?", "how can I reset the password") == 1.0
    # tokens {cancel, plan} / {cancel, subscription}: 1/3; trigrams share 5 of 21 (0.24): the larger is 1/3
    assert text_similarity("cancel plan", "cancel subscription") == pytest.approx(1 / 3)
    assert text_similarity("How do I reset my password?", "What are your prices?") == 0.0


def test_rephrase_inside_and_outside_the_window():
    now = 1_000.0
    similar = lambda a, b: 0.8  # noqa: E731
    assert rephrase("q", [("earlier", 900.0)], now, 300, similar).strength == 0.8
    assert rephrase("q", [("earlier", 600.0)], now, 300, similar) is None  # 400 s before: too long ago
    assert rephrase("q", [("later", 1_100.0)], now, 300, similar) is None  # after this question
    assert rephrase("q", [("earlier", 900.0)], now, 300, lambda a, b: 0.6) is None  # not similar enough


def test_rephrase_counts_exact_repeats_and_names_the_earlier_question():
    earlier = [("What are your prices?", 990.0), ("how can I reset the password", 960.0)]
    signal = rephrase("How do I reset my password?", earlier, 1_000.0, 300)
    assert signal.strength == 1.0 and "how can I reset the password" in signal.reason and "40s" in signal.reason
    assert rephrase("Reset password?", [("Reset password?", 999.0)], 1_000.0, 300).strength == 1.0
    with pytest.raises(ValueError, match="window"):
        rephrase("q", [], 1_000.0, 0)


@pytest.mark.parametrize("question", [
    "Can I talk to a human?",
    "I want to speak to an agent",
    "Can I speak to someone please",
    "Get me a REAL person",
    "I need a human",
    "Please call me back",
    "Connect me to support",
    "escalate this please",
    "Is there a representative I can write to?",
    "no more bots!",
])
def test_human_requests(question):
    assert human_request(question).strength == 1.0


@pytest.mark.parametrize("question", [
    "How do I add a new agent to my team?",
    "How do I escalate a ticket to the billing team?",
    "How can customers chat with an agent from the widget?",
    "How do I set up call routing?",
    "Does the Human Resources integration sync holidays?",
])
def test_not_human_requests(question):
    assert human_request(question) is None


def test_output_guard_names_what_the_customer_was_not_shown_once_each():
    assert output_guard([]) is None
    signal = output_guard(["system prompt", "https://evil.example/x", "https://evil.example/x"])
    assert signal == Signal("output_guard", "removed before it was shown: system prompt, https://evil.example/x", 1.0)


def test_detect_all_reports_every_signal_in_kind_order():
    view = InteractionView(
        question="Can I talk to a human? How can I reset the password",
        answer="I don't know. Passwords reset themselves every Tuesday at noon.",
        created_at=1_000.0,
        retrieved_scores=[0.2, 0.1],
        passages=[BUTTON_PASSAGE],
        ratings=["down"],
        corrections=["Click Forgot password on the sign-in page."],
        earlier_questions=[("How do I reset my password? Can I talk to a human?", 950.0)],
        guarded=["https://evil.example/reset"],
    )
    signals = detect_all(view, DetectorConfig(retrieval_threshold=0.4))
    assert [s.kind for s in signals] == list(KINDS)
    assert signals[2].strength == pytest.approx(0.5)  # (0.4 - 0.2) / 0.4


def test_detect_all_is_quiet_on_a_good_answer():
    view = InteractionView(
        question="How do I get a refund?",
        answer="Open Settings and press Request refund [1].",
        created_at=1_000.0,
        retrieved_scores=[0.8],
        passages=[BUTTON_PASSAGE],
        ratings=["up"],
    )
    assert detect_all(view) == []


def test_detector_config_names_bad_values():
    with pytest.raises(ValueError, match="groundedness_threshold"):
        DetectorConfig(groundedness_threshold=1.5)
    with pytest.raises(ValueError, match="retrieval_threshold"):
        DetectorConfig(retrieval_threshold=0)
    with pytest.raises(ValueError, match="rephrase_window_s"):
        DetectorConfig(rephrase_window_s=-1)
