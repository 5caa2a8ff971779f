import json

import pytest

from affinage.core.checksums import iban_check_digits, iban_valid, luhn_valid, ssn_valid
from affinage.core.decontamination import decontaminate, dedupe
from affinage.core.pii import redact_pii, redact_records
from affinage.core.text import jaccard, shingles
from synth_data.filters import (
    ANONYMOUS,
    FilterReport,
    cap_failures_per_user,
    groundedness_at_least,
    keep_if,
    length_ok,
    run_filters,
)
from synth_data.pii_eval import judge, load_corpus, score
from tests.conftest import GOLDEN, REPO


def test_redaction_exact_output():
    assert redact_pii("Contact jane.doe@example.com or +44 20 7946 0958.") == (
        "Contact [EMAIL] or [PHONE].", {"email": 1, "phone": 1})
    assert redact_pii("Paid with 4111 1111 1111 1111, order 1234 5678 9012 3456.") == (
        "Paid with [CARD], order 1234 5678 9012 3456.", {"card": 1})
    assert redact_pii("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.abc123def456. Server 10.0.0.12.") == (
        "Authorization: Bearer [SECRET]. Server [IP].", {"secret": 1, "ip": 1})


PLANTED = [
    ("JOHN.Smith+support@mail.example.co.uk", "email"),
    ("4111-1111-1111-1111", "card"),
    ("4111111111111111", "card"),
    ("3782 822463 10005", "card"),  # Amex, 15 digits
    ("+1 (555) 010-9999", "phone"),
    ("+4915112345678", "phone"),
    ("(555) 010-9999", "phone"),
    ("555-010-9999", "phone"),
    ("555.010.9999", "phone"),
    ("030 1234567", "phone"),
    ("06 12 34 56 78", "phone"),
    ("192.168.1.254", "ip"),
    ("2001:db8::8a2e:370:7334", "ip"),
    ("fe80::1ff:fe23:4567:890a", "ip"),
    ("::ffff:192.0.2.1", "ip"),
    ("sk-proj-abcdefghijklmnopqrstuvwx123", "secret"),
    ("afk_Xy3_kq9LmN0pQrStUvWxYz12AbCdEf", "secret"),
    ("ghp_abcdefghijklmnopqrstuvwxyz0123456789", "secret"),
    ("AKIAIOSFODNN7EXAMPLE", "secret"),
    ("xoxb-1234567890-abcdefghij", "secret"),
]


@pytest.mark.parametrize("text, expected", [
    ("call me at 5550199876 please", "call me at [PHONE] please"),
    ("password: hunter22.", "password: [SECRET]."),
    ("api_key=3f9a8c7e6d5b4a39281706f5e4d3c2b1", "api_key=[SECRET]"),
    ("The token is 9f8e7d6c5b4a3f2e1d0c", "The token is [SECRET]"),
])
def test_secrets_and_phones_by_context(text, expected):
    assert redact_pii(text)[0] == expected


NOT_PII_NUMBERS = [
    "On 2024-05-01, 01.05.2024 and 01/05/2024 10:30 and 01-05-2024 12:00",
    "Upgrade from version 1.2.3 to 10.0.19045.2965",
    "It costs $1,299.99 (or 1.299,00 €) for 5 500 users",
    "error 404 after 3 days, ticket #123456, 1,000,000 rows, 2019-2024",
    "order 1234567890123456 failed",  # 16 digits, fails Luhn
    "not an address: 999.1.1.1 or 1.2.3.256; time 10:30:00",
    "the token is documented-in-settings; tokens: 1500",
    "Use the Settings > Security page and TLS 1.2 or higher.",
]


def test_luhn():
    assert luhn_valid("4111 1111 1111 1111")
    assert luhn_valid("79927398713")  # the textbook example
    assert not luhn_valid("1234-5678-9012-3456")
    with pytest.raises(ValueError, match="12ab"):
        luhn_valid("12ab")


NEW_FORMATS = [
    ("123-45-6789", "ssn"),
    ("123 45 6789", "ssn"),
    ("4111.1111.1111.1111", "card"),
    ("3782.822463.10005", "card"),
    ("4111\u00a01111\u00a01111\u00a01111", "card"),
    ("DE89 3704 0044 0532 0130 00", "iban"),
    ("DE89370400440532013000", "iban"),
    ("GB82 WEST 1234 5698 7654 32", "iban"),
    ("NO93 8601 1117 947", "iban"),  # the shortest: 15 characters
    ("MT84 MALT 0110 0001 2345 MTLC AST0 01S", "iban"),  # letters within the account number
    ("bob.pii at example dot com", "email"),
    ("bob [at] example [dot] com", "email"),
    ("bob(at)example(dot)com", "email"),
    ("bob AT example DOT com", "email"),
    ("jane dot doe at example dot co dot uk", "email"),
    ("bob -at- example -dot- com", "email"),
    ("bob @ example . com", "email"),
    ("bob@example dot com", "email"),
    ("bob[@]example[.]com", "email"),
    ("li.wei (at) example.com", "email"),
    ("müller@example.de", "email"),
    ("bob\uff20example.com", "email"),  # full-width at sign
]


@pytest.mark.parametrize("planted, kind", PLANTED + NEW_FORMATS)
def test_planted_pii_is_replaced(planted, kind):
    text, counts = redact_pii(f"Details: {planted} (see above).")
    assert text == f"Details: [{kind.upper()}] (see above)."
    assert counts == {kind: 1}


@pytest.mark.parametrize("text, expected", [
    ("my SSN is 123456789.", "my SSN is [SSN]."),
    ("Social Security number: 219.09.9999", "Social Security number: [SSN]"),
    ("mail sam at example.com today", "mail [EMAIL] today"),  # a plain name needs an e-mail word before it
    ("IBAN:de89 3704 0044 0532 0130 00, thanks", "IBAN:[IBAN], thanks"),
])
def test_ssn_and_obfuscated_emails_by_context(text, expected):
    assert redact_pii(text)[0] == expected


@pytest.mark.parametrize("zero_width", ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad"])
def test_invisible_characters_are_looked_through_and_dropped_with_the_span(zero_width):
    text = f"Mail jane{zero_width}.doe@exam{zero_width}ple.com, card 4111{zero_width} 1111 1111 1111."
    assert redact_pii(text) == ("Mail [EMAIL], card [CARD].", {"email": 1, "card": 1})
    prose = f"Thanks 👩\u200d💻, infor{zero_width}mation"  # outside a replaced span they stay
    assert redact_pii(prose) == (prose, {})


NEAR_MISSES = [
    "examples 000-12-3456, 666-12-3456, 912-34-5678, 123-00-4567 and 123-45-0000",  # never-issued SSNs
    "000 12 3456 is a test value",
    "order 4111.1111.1111.1112 and 1234-5678-9012-3456 failed",  # Luhn fails
    "ISBN 978-3-16-148410-0 or 9783161484100",
    "IBAN DE88 3704 0044 0532 0130 00 has a typo; GB82 WEST 1234 5698 7654 33 too",  # mod 97 fails
    "XY12 3456 7890 1234 5678 90 is no country; DE89 3704 0044 0532 0130 is too short",
    "Please look at the docs, dot the i's and cross the t's.",
    "It worked at Amazon dot com; point at the dot in the logo.",
    "See the guide at help.example.com, Python 3.12 at python.org, the README.md at github.com.",
    "Contact us at support.example.com or send a follow-up at docs.example.com.",
    "Follow @acme_support; use @app.route('/login') and @property.",
    "python 3.11.7, build 2024.05.1234, ZIP 12345-6789, id 123e4567-e89b-12d3-a456-426614174000",
    "password: ********",
]


@pytest.mark.parametrize("text", NOT_PII_NUMBERS + NEAR_MISSES)
def test_what_is_not_pii_stays(text):
    assert redact_pii(text) == (text, {})


@pytest.mark.parametrize("text, keep, counts", [
    ("Mail support@acme.example or me@home.example, card 4111 1111 1111 1111, password=s3cret-Pass, ip 8.8.8.8",
     "SUPPORT@acme.example", {"email": 1, "card": 1, "secret": 1, "ip": 1}),
    ("SSN 123-45-6789, IBAN DE89 3704 0044 0532 0130 00, bob at example dot com, help [at] acme [dot] example",
     "help [at] acme [dot] example", {"ssn": 1, "iban": 1, "email": 1}),
])
def test_redaction_is_idempotent_and_respects_keep(text, keep, counts):
    once, found = redact_pii(text, keep={keep})
    assert found == counts and keep.lower() in once.lower()
    assert redact_pii(once, keep={keep.lower()}) == (once, {})


@pytest.mark.parametrize("number, valid", [
    ("123-45-6789", True), ("001010001", True), ("899 99 9999", True), ("078.05.1120", True),
    ("000-12-3456", False), ("666-12-3456", False), ("900-12-3456", False), ("999-99-9999", False),
    ("123-00-6789", False), ("123-45-0000", False),
])
def test_ssn_validity(number, valid):
    assert ssn_valid(number) is valid


def test_ssn_validity_refuses_what_is_not_nine_digits():
    for bad in ("12-34-567", "12a-45-6789", "123-45-67890"):
        with pytest.raises(ValueError, match=bad):
            ssn_valid(bad)


def test_iban_mod_97_by_hand():
    # check digits = 98 - (BBAN + country + "00") mod 97, letters as A=10 ... Z=35:
    # "AA", "0": 0 1010 00 = 101000 = 97 * 1041 + 23, so 98 - 23 = 75
    assert iban_check_digits("AA", "0") == "75"
    # "DE", "1": 1 1314 00 = 1131400 = 97 * 11663 + 89, so 98 - 89 = 09
    assert iban_check_digits("de", "1") == "09"
    # the registry's examples; GB82WEST12345698765432 rearranged is 3214282912345698765432161182, which is 1 mod 97
    assert iban_check_digits("GB", "WEST12345698765432") == "82" and 3214282912345698765432161182 % 97 == 1
    assert iban_check_digits("DE", "3704 0044 0532 0130 00") == "89"
    assert iban_valid("GB82 WEST 1234 5698 7654 32") and iban_valid("be68-5390-0754-7034")
    assert not iban_valid("GB82 WEST 1234 5698 7654 23")  # two digits swapped
    assert not iban_valid("GB82 WEST 1234 5698 7654 3")  # GB is 22 characters
    assert not iban_valid("XX82 WEST 1234 5698 7654 32")  # not a registered country
    with pytest.raises(ValueError, match="DE89!"):
        iban_valid("DE89!3704")
    with pytest.raises(ValueError, match="D1"):
        iban_check_digits("D1", "0")


def test_pii_scoring_judges_spans_by_hand():
    positive = {"id": "p", "label": "positive", "kind": "card", "form": "dots", "text": "pay 4111.1111 now",
                "spans": [{"start": 4, "end": 13, "kind": "card", "text": "4111.1111"}]}
    assert judge(positive, "pay [CARD] now") == {"caught": True, "exact": True}
    assert judge(positive, "[PHONE] [CARD] now") == {"caught": True, "exact": False}  # more than the span went
    assert judge(positive, "pay 4111.1111 now") == {"caught": False, "exact": False}
    negative = {"id": "n", "label": "negative", "kind": "card", "form": "order", "text": "order 12", "spans": []}
    result = score([positive, negative], redact=lambda text: text.replace("4111.1111", "[CARD]").replace("12", "[X]"))
    assert (result["recall"], result["precision"], result["kinds"]["card"]["exact"]) == (1.0, 0.0, 1)
    assert [r["id"] for r in result["false_positives"]] == ["n"]
    with pytest.raises(ValueError, match="'p'"):
        score([{**positive, "spans": [{**positive["spans"][0], "end": 12}]}])


def test_pii_corpus_reaches_the_targets():
    """bench/pii_recall.py writes the figures; this holds redact_pii to them (recall >= 0.98, precision >= 0.95)."""
    records = load_corpus(REPO / "bench" / "pii_corpus.jsonl")
    positives = [r for r in records if r["label"] == "positive"]
    assert len(positives) >= 200 and len(records) - len(positives) >= 200
    assert {r["kind"] for r in positives} >= {"email", "phone", "card", "ssn", "iban", "ip", "secret"}
    result = score(records)
    assert result["recall"] >= 0.98, result["misses"]
    assert result["precision"] >= 0.95, result["false_positives"]


def test_redact_records_counts_every_field_and_drops_nothing():
    records = [{"question": "I am jane@example.com", "answer": "ok", "correction": None, "user": "u1"},
               {"question": "card 4111111111111111", "answer": "mail bob@example.org"}]
    out, dropped, counts = redact_records(records)
    assert dropped == 0 and counts == {"email": 2, "card": 1}
    assert out[0] == {"question": "I am [EMAIL]", "answer": "ok", "correction": None, "user": "u1"}
    assert records[0]["question"] == "I am jane@example.com"  # inputs untouched


def test_shingle_jaccard_ignores_case_and_punctuation():
    assert shingles("Reset, PASSWORD!") == shingles("reset password")
    # "abcdef" -> {abcde, bcdef}; "abcdeg" -> {abcde, bcdeg}: 1 shared of 3
    assert jaccard(shingles("abcdef"), shingles("abcdeg")) == pytest.approx(1 / 3)


def test_dedupe_keeps_the_first_of_near_identical_items():
    items = ["How do I reset my password?", "how do I reset my password", "How do I reset my password??!",
             "How do I export invoices?"]
    kept, dropped = dedupe(items, str)
    assert kept == ["How do I reset my password?", "How do I export invoices?"] and dropped == 2
    with pytest.raises(ValueError, match="1.2"):
        dedupe(items, str, threshold=1.2)


def golden_questions() -> list[str]:
    return [json.loads(line)["question"] for line in GOLDEN.read_text().splitlines() if line.strip()]


def test_decontamination_removes_near_copies_of_golden_questions():
    golden = golden_questions()
    assert "After I mark a conversation as resolved, how long until it gets locked for good?" in golden
    items = [
        {"question": "after i mark a conversation RESOLVED -- how long until it's locked for good"},  # casing, words
        {"question": "Which characters can I use in the web address my team logs in at??"},  # shares 8 words
        {"question": "How do I export all my invoices as one PDF?"},
    ]
    kept, dropped, matches = decontaminate(items, lambda item: item["question"], golden)
    assert kept == [items[2]] and dropped == 2
    assert [(m.index, m.method) for m in matches] == [(0, "jaccard"), (1, "ngram")]
    assert matches[0].protected_question == golden[1]


def test_decontamination_by_injected_embeddings():
    protected = ["What characters may our login subdomain contain?"]
    vectors = {protected[0]: [1.0, 0.0], "Which letters are allowed in the workspace URL?": [0.95, 0.05],
               "How do refunds work?": [0.0, 1.0]}
    items = ["Which letters are allowed in the workspace URL?", "How do refunds work?"]
    embed = lambda texts: [vectors[t] for t in texts]  # noqa: E731
    assert decontaminate(items, str, protected)[1] == 0  # lexically far
    kept, dropped, matches = decontaminate(items, str, protected, embed=embed, embedding_threshold=0.9)
    assert kept == ["How do refunds work?"] and dropped == 1
    assert matches[0].method == "embedding" and matches[0].score == pytest.approx(0.95 / (0.95**2 + 0.05**2) ** 0.5)
    with pytest.raises(ValueError, match="shapes"):
        decontaminate(items, str, protected, embed=lambda texts: [[1.0]])


def test_length_and_groundedness_filters():
    assert length_ok("  hello  ", 5, 5) and not length_ok("hi", 3, 10) and not length_ok("x" * 11, 0, 10)
    with pytest.raises(ValueError, match="min_chars=10"):
        length_ok("x", 10, 5)
    items = [{"g": 0.9}, {"g": 0.4}, {"g": None}]
    assert groundedness_at_least(items, lambda item: item["g"], 0.5) == ([{"g": 0.9}], 2)
    assert keep_if([1, 2, 3, 4], lambda n: n % 2 == 0) == ([2, 4], 2)


def test_cap_per_user_counts_failures_and_caps_anonymous_items_together():
    """More in tests/synth_data/test_user_cap.py."""
    items = [{"user": user, "n": n} for n, user in enumerate([None, "", ANONYMOUS, "bob"])]
    kept, dropped, report = cap_failures_per_user(items, user=lambda x: x["user"], failure=lambda x: x["n"],
                                                  kind=lambda x: "sft", when=lambda x: x["n"], share=0.5, floor=2)
    assert kept == items[1:] and dropped == 1 and report.users[ANONYMOUS]["dropped"] == 1


def test_run_filters_report_adds_up():
    golden = golden_questions()
    items = ([{"question": "How do I reset my password?", "user": "mallory", "answer": "Mail me at x@example.com"}] * 5
             + [{"question": f"How do I configure webhook number {n} for tickets?", "user": "mallory", "answer": "ok"}
                for n in range(10)]
             + [{"question": golden[1].upper(), "user": "alice", "answer": "ok"},
                {"question": "Hi", "user": "bob", "answer": "ok"}])
    question = lambda item: item["question"]  # noqa: E731
    kept, report = run_filters(items, [
        ("pii", redact_records),
        ("length", lambda xs: keep_if(xs, lambda x: length_ok(x["question"], 5, 500))),
        ("dedupe", lambda xs: dedupe(xs, question, 0.95)),
        ("decontaminate", lambda xs: decontaminate(xs, question, golden)),
        ("cap_per_user", lambda xs: cap_failures_per_user(  # each question is its own failure; mallory keeps 6
            xs, user=lambda x: x["user"], failure=question, kind=lambda x: "sft", when=lambda x: 0,
            share=0.5, floor=6)),
    ])
    assert isinstance(report, FilterReport)
    assert report.dropped == {"pii": 0, "length": 1, "dedupe": 4, "decontaminate": 1, "cap_per_user": 5}
    assert report.items_in - report.items_out == sum(report.dropped.values()) == 11
    assert len(kept) == report.items_out == 6
    assert report.details["pii"] == {"email": 5}
    as_json = report.to_json()
    assert as_json["details"]["decontaminate"][0]["protected_index"] == 1
    json.dumps(as_json)


def test_run_filters_refuses_inconsistent_steps():
    with pytest.raises(ValueError, match="'liar'"):
        run_filters([1, 2, 3], [("liar", lambda xs: (xs[:1], 1))])
    with pytest.raises(ValueError, match="unique"):
        run_filters([1], [("a", lambda xs: (xs, 0)), ("a", lambda xs: (xs, 0))])
