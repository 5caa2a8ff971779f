#!/usr/bin/env python
"""PII redaction on a labelled corpus: recall per kind on texts that hold PII, precision on near-misses.

    .venv/bin/python bench/pii_recall.py [--write-corpus] [--corpus PATH] [--seed N] [--no-write]

1. The corpus (``bench/pii_corpus.jsonl``, committed) is generated here from a seed: support messages with
   planted PII of every kind ``affinage.core.pii.redact_pii`` handles (emails plain, obfuscated and split by
   invisible characters; phones; cards with each separator; SSNs; IBANs of several countries; IPs; secrets),
   each with the exact span(s), and near-miss negatives (Luhn-failing order numbers, never-issued SSNs, IBANs
   with a bad checksum, "at"/"dot" in prose, dates, versions, prices, ticket ids, ISBNs, UUIDs...).
   ``--write-corpus`` rewrites the file; otherwise the committed file is scored and compared with what the
   generator makes now.
2. Scored by ``synth_data.pii_eval.score`` (the tests use the same function): a positive is caught when every
   labelled span is gone from the redacted text, exact when only the spans were replaced; a negative must come
   back unchanged. Target: recall >= 0.98 at precision >= 0.95.
3. Rewrites the ``bench:pii_recall`` section of BENCHMARKS.md (``--no-write`` prints it only).
"""

from __future__ import annotations

import argparse
import json
import random
import string
import sys
import time
from pathlib import Path

from _common import ROOT, command_line, cpu_model, load_average, markers, nproc, publish

sys.path.insert(0, str(ROOT))

from affinage.core.checksums import iban_check_digits, iban_valid, luhn_valid, ssn_valid  # noqa: E402
from synth_data.pii_eval import load_corpus, score  # noqa: E402

CORPUS = ROOT / "bench" / "pii_corpus.jsonl"
SEED = 13616
START, END = markers("pii_recall")
TARGET_RECALL, TARGET_PRECISION = 0.98, 0.95
ZERO_WIDTH = {"zwsp": "\u200b", "zwnj": "\u200c", "zwj": "\u200d", "word-joiner": "\u2060", "bom": "\ufeff",
              "soft-hyphen": "\u00ad"}
# BBAN layouts (n digit, a letter, c letter or digit) close to each country's registered format.
BBANS = {"DE": "n" * 18, "GB": "aaaa" + "n" * 14, "FR": "n" * 10 + "c" * 11 + "nn", "NL": "aaaa" + "n" * 10,
         "ES": "n" * 20, "IT": "a" + "n" * 10 + "c" * 12, "BE": "n" * 12, "CH": "n" * 5 + "c" * 12, "AT": "n" * 16,
         "PL": "n" * 24, "SE": "n" * 20, "NO": "n" * 11, "IE": "aaaa" + "n" * 14, "PT": "n" * 21, "DK": "n" * 14,
         "MT": "aaaa" + "n" * 5 + "c" * 18, "SA": "nn" + "c" * 18, "BR": "n" * 23 + "ac", "LU": "nnn" + "c" * 13}
LOCALS = ["bob.pii", "jane.doe", "j.smith", "maria_garcia", "li.wei", "oconnor", "ahmed+support", "k.tanaka",
          "anna-lena", "pat99", "sam", "priya.r", "tom.baker", "lucia", "d.okafor"]
DOMAINS = ["example.com", "example.org", "mail.example.net", "example.co.uk", "corp.example.io", "example.de"]


class Corpus:
    """Records built from templates whose ``{}`` slots take (text, kind) pieces, with exact spans."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.records: list[dict] = []

    def add(self, label: str, kind: str, form: str, template: str, *pieces: tuple[str, str]) -> None:
        parts = template.split("{}")
        if len(parts) != len(pieces) + 1:
            raise ValueError(f"template {template!r} has {len(parts) - 1} slots for {len(pieces)} pieces")
        text, spans = parts[0], []
        for (piece, piece_kind), after in zip(pieces, parts[1:], strict=True):
            if label == "positive":
                spans.append({"start": len(text), "end": len(text) + len(piece), "kind": piece_kind, "text": piece})
            text += piece + after
        prefix = "pos" if label == "positive" else "neg"
        number = sum(r["label"] == label for r in self.records) + 1
        self.records.append({"id": f"{prefix}-{number:03d}", "label": label, "kind": kind, "form": form,
                             "text": text, "spans": spans})

    def pos(self, kind: str, form: str, template: str, *pieces: tuple[str, str]) -> None:
        self.add("positive", kind, form, template, *pieces)

    def neg(self, kind: str, form: str, template: str, *values: str) -> None:
        self.add("negative", kind, form, template, *[(v, kind) for v in values])

    # --- random values ------------------------------------------------------------------------------------------

    def digits(self, n: int) -> str:
        return "".join(self.rng.choice(string.digits) for _ in range(n))

    def pick(self, options):
        return self.rng.choice(options)

    def card(self, prefix: str, length: int) -> str:
        body = prefix + self.digits(length - len(prefix) - 1)
        return next(body + d for d in string.digits if luhn_valid(body + d))

    def ssn(self) -> str:
        area = self.rng.choice([a for a in range(1, 900) if a != 666])
        return f"{area:03d}{self.rng.randint(1, 99):02d}{self.rng.randint(1, 9999):04d}"

    def iban(self, country: str) -> str:
        chars = {"n": string.digits, "a": string.ascii_uppercase}
        bban = "".join(self.rng.choice(chars[c]) if c in chars else
                       self.rng.choice(string.digits if self.rng.random() < 0.8 else string.ascii_uppercase)
                       for c in BBANS[country])
        return country + iban_check_digits(country, bban) + bban

    def token(self, n: int, alphabet: str = string.ascii_letters + string.digits) -> str:
        while True:  # letters and digits mixed, as a generated key is
            found = "".join(self.rng.choice(alphabet) for _ in range(n))
            if any(c.isdigit() for c in found) and any(c.isalpha() for c in found):
                return found


def grouped(digits: str, sizes: list[int], sep: str) -> str:
    out, at = [], 0
    for size in sizes:
        out.append(digits[at:at + size])
        at += size
    return sep.join(out)


def fours(text: str, sep: str = " ") -> str:
    return sep.join(text[i:i + 4] for i in range(0, len(text), 4))


def spelled(address: str, at: str, dot: str) -> str:
    local, domain = address.split("@")
    return local + at + domain.replace(".", dot)


# Hand-picked forms beside the generated ones: (kind, form, template with one slot, the PII).
HARD_POSITIVES = [
    ("email", "unicode", "Ich bin {}, bitte antworten", "müller@example.de"),
    ("email", "unicode", "soy {} gracias", "josé.garcía@example.es"),
    ("email", "angle-brackets", "From: Jane <{}>", "jane.doe@example.com"),
    ("email", "mailto", "link mailto:{} was in the footer", "bob.pii@example.org"),
    ("email", "upper-case", "EMAIL: {}", "JOHN.SMITH@EXAMPLE.COM"),
    ("email", "full-width-at", "write to {} please", "bob\uff20example.com"),
    ("email", "obfuscated-spelled", "cc {} on the reply", "lucia at example.org"),
    ("email", "obfuscated-spelled", "ping {} about it", "sam at example.com"),
    ("email", "obfuscated-brackets", "mail: {}", "bob [ at ] example [ dot ] com"),
    ("email", "obfuscated-parens", "it's {} btw", "li.wei (at) example.com"),
    ("email", "obfuscated-spelled", "try {} instead", "anna-lena at example dot de"),
    ("email", "zero-width-obfuscated", "reach me: {}", "bob\u200b.pii at example dot com"),
    ("card", "zero-width", "card {} please", "4111\u200b1111 1111 1111"),
    ("card", "no-break-spaces", "Karte {} bitte", "4111\u00a01111\u00a01111\u00a01111"),
    ("ssn", "zero-width", "SSN {}", "123-45-\u200b6789"),
    ("ssn", "dots", "my number {} for the form", "219.09.9999"),
    ("iban", "zero-width", "IBAN {}", "DE89\u200b 3704 0044 0532 0130 00"),
    ("iban", "no-break-spaces", "IBAN {}", "FR14\u00a02004\u00a01010\u00a00505\u00a00001\u00a03M02\u00a0606"),
    ("phone", "intl-dashes", "ring {} today", "+1-415-555-0134"),
    ("phone", "uk-trunk-zero", "phone {} please", "+44 (0)20 7946 0958"),
    ("phone", "us-spaces", "my cell is {}", "415 555 0134"),
    ("phone", "intl-double-zero", "tel: {}", "0049 30 1234567"),
    ("phone", "in-intl", "WhatsApp {} anytime", "+91 98765 43210"),
    ("phone", "jp-intl", "office {} (Tokyo)", "+81 3-1234-5678"),
    ("phone", "zero-width", "call {}", "+44 20 7946\u200b 0958"),
    ("ip", "v4-port", "it listens on {}:8080", "10.0.0.1"),
    ("ip", "v6-bracketed", "connect to [{}]:443", "2001:db8::1"),
    ("secret", "anthropic", "key {} leaked", "sk-ant-api03-Xk9vQ2mN7pL4rT8wZ1cB5dF3"),
]
# Hand-picked near-misses beside the generated ones: (kind they could pass for, form, text).
HARD_NEGATIVES = [
    ("email", "at-dot-prose", "Python 3.12 at python.org is the one we test."),
    ("email", "at-dot-prose", "the README.md at github.com explains it"),
    ("email", "at-dot-prose", "It costs 9.99 at amazon.com."),
    ("email", "at-dot-prose", "Send a follow-up at docs.example.com if unclear."),
    ("email", "at-dot-prose", "Do the sign-in at app.example.io first."),
    ("email", "at-dot-prose", "ping @bob.smith on Slack"),
    ("email", "at-dot-prose", "weights at 0.5 at most"),
    ("email", "git-remote", "clone git@github.com:org/repo.git"),
    ("ssn", "zip-plus-4", "ZIP 12345-6789 for the office"),
    ("ssn", "build-number", "build 2024.05.1234 failed"),
    ("iban", "product-code", "product AB12CD34EF56GH78 is sold out"),
    ("iban", "prose", "ask DE12 about it"),
    ("card", "phone-list", "numbers 555-0134, 555-0199 and 555-0142"),
    ("phone", "math", "2 + 2 = 4 and 10 - 3 = 7"),
    ("phone", "year-range", "from 1999-2024, 2019-2024"),
]


def positives(c: Corpus) -> None:
    email_ctx = ["Please reply to {} when it's fixed.", "My email is {}", "you can reach me on {} any time",
                 "Contact: {}", "send the invoice to {}, thanks", "I signed up as {} last week", "{} is my login",
                 "Write to {}."]
    addresses = [f"{c.pick(LOCALS)}@{c.pick(DOMAINS)}" for _ in range(60)]
    for i in range(12):
        c.pos("email", "plain", email_ctx[i % len(email_ctx)], (addresses[i], "email"))
    styles = [("spelled", " at ", " dot "), ("spelled-caps", " AT ", " DOT "), ("brackets", " [at] ", " [dot] "),
              ("parens", "(at)", "(dot)"), ("parens-spaced", " (at) ", " (dot) "), ("braces", " {at} ", " {dot} "),
              ("angle", " <at> ", " <dot> "), ("fenced", " -at- ", " -dot- "), ("defanged", "[@]", "[.]"),
              ("at-sign-spelled-dot", "@", " dot "), ("spaced-symbols", " @ ", " . "),
              ("brackets-at-only", " [at] ", ".")]
    for i, (form, at, dot) in enumerate(styles * 3):
        address = addresses[12 + i]
        c.pos("email", f"obfuscated-{form}", email_ctx[i % len(email_ctx)], (spelled(address, at, dot), "email"))
    for i, name in enumerate(["jane dot doe", "tom dot baker", "li dot wei"]):
        c.pos("email", "obfuscated-spelled-local", "email me: {} please",
              (f"{name} at example dot {['com', 'org', 'net'][i]}", "email"))
    c.pos("email", "obfuscated-spelled", "mail {} for the refund", ("sam at example.com", "email"))
    c.pos("email", "obfuscated-spelled", "it was from {} I think", ("lucia at example dot org", "email"))
    for i, (form, char) in enumerate(list(ZERO_WIDTH.items()) * 3):
        address = addresses[48 + i % 12]
        cut = c.rng.randint(1, len(address) - 1)
        twice = i >= len(ZERO_WIDTH) * 2
        address = address[:cut] + char + address[cut:]
        if twice:
            second = c.rng.randint(cut + 2, len(address) - 1)
            address = address[:second] + char + address[second:]
        c.pos("email", f"zero-width-{form}", email_ctx[i % len(email_ctx)], (address, "email"))

    phone_ctx = ["Call me on {} after 5pm.", "my number is {}", "Phone: {}", "you can text {} if needed",
                 "reach me at {} tomorrow"]
    phones = [
        ("uk-intl", lambda: f"+44 20 7946 {c.digits(4)}"),
        ("us-intl", lambda: f"+1 ({c.rng.randint(201, 989)}) 555-{c.digits(4)}"),
        ("us-parens", lambda: f"({c.rng.randint(201, 989)}) 555-{c.digits(4)}"),
        ("us-dashes", lambda: f"{c.rng.randint(201, 989)}-555-{c.digits(4)}"),
        ("us-dots", lambda: f"{c.rng.randint(201, 989)}.555.{c.digits(4)}"),
        ("de-intl", lambda: f"+49 30 {c.digits(7)}"),
        ("fr-intl", lambda: f"+33 6 {c.digits(2)} {c.digits(2)} {c.digits(2)} {c.digits(2)}"),
        ("fr-national", lambda: f"06 {c.digits(2)} {c.digits(2)} {c.digits(2)} {c.digits(2)}"),
        ("de-national", lambda: f"030 {c.digits(7)}"),
        ("compact-intl", lambda: f"+4915{c.digits(9)}"),
        ("uk-mobile", lambda: f"+44 7700 900{c.digits(3)}"),
    ]
    for i in range(22):
        form, make = phones[i % len(phones)]
        c.pos("phone", form, phone_ctx[i % len(phone_ctx)], (make(), "phone"))
    for _ in range(3):
        c.pos("phone", "bare-with-context", "call me at {} please", (f"{c.rng.randint(201, 989)}555{c.digits(4)}",
                                                                     "phone"))

    card_ctx = ["I paid with {} yesterday", "card number: {}", "Charge {} instead please.", "my card {} was declined",
                "the Visa ending... actually full number {}"]
    networks = [("4", 16, [4, 4, 4, 4]), ("51", 16, [4, 4, 4, 4]), ("2221", 16, [4, 4, 4, 4]),
                ("37", 15, [4, 6, 5]), ("6011", 16, [4, 4, 4, 4]), ("35", 16, [4, 4, 4, 4]),
                ("36", 14, [4, 6, 4]), ("62", 19, [4, 4, 4, 4, 3]), ("55", 16, [4, 4, 4, 4]),
                ("4", 16, [4, 4, 4, 4]), ("34", 15, [4, 6, 5])]
    for sep_name, sep in [("spaces", " "), ("dashes", "-"), ("dots", "."), ("none", "")]:
        for i, (prefix, length, sizes) in enumerate(networks):
            number = c.card(prefix, length)
            c.pos("card", sep_name, card_ctx[i % len(card_ctx)], (grouped(number, sizes, sep), "card"))

    ssn_ctx = ["My SSN is {} if you need it.", "social security: {}", "for the tax form: {}", "ssn {}",
               "It's {}, please update the W-9."]
    c.pos("ssn", "dashes", "my SSN is {}", ("123-45-6789", "ssn"))
    for i in range(15):
        number = c.ssn()
        c.pos("ssn", "dashes", ssn_ctx[i % len(ssn_ctx)], (f"{number[:3]}-{number[3:5]}-{number[5:]}", "ssn"))
    for i in range(5):
        number = c.ssn()
        c.pos("ssn", "spaces", ssn_ctx[i % len(ssn_ctx)], (f"{number[:3]} {number[3:5]} {number[5:]}", "ssn"))
    for template in ["my SSN is {}", "SSN: {}", "Social Security number {}", "SSN#{}", "social security no. {}"]:
        number = c.ssn()
        if "no." in template:
            number = f"{number[:3]}.{number[3:5]}.{number[5:]}"
        c.pos("ssn", "context", template, (number, "ssn"))

    iban_ctx = ["IBAN: {}", "please refund to {} (my bank account)", "Transfer it to {}.", "account {} thanks",
                "My IBAN is {}"]
    countries = list(BBANS)
    for i in range(len(countries) * 2):
        country = countries[i % len(countries)]
        iban = c.iban(country)
        form = "spaced" if i < len(countries) else "compact"
        c.pos("iban", f"{form}", iban_ctx[i % len(iban_ctx)], (fours(iban) if form == "spaced" else iban, "iban"))
    for country in ["DE", "GB", "NL"]:
        c.pos("iban", "lowercase", "iban {} pls", (fours(c.iban(country)).lower(), "iban"))
    c.pos("iban", "textbook", "e.g. {}", ("GB82 WEST 1234 5698 7654 32", "iban"))

    ip_ctx = ["My server is {} and it times out.", "Login blocked from {}", "whitelist {} please", "IP: {}"]
    ips = [lambda: f"81.{c.rng.randint(0, 255)}.{c.rng.randint(0, 255)}.{c.rng.randint(1, 254)}",
           lambda: f"203.0.113.{c.rng.randint(1, 254)}",
           lambda: f"192.168.{c.rng.randint(0, 255)}.{c.rng.randint(1, 254)}",
           lambda: f"2001:db8:{c.rng.randint(1, 0xffff):x}::{c.rng.randint(1, 0xffff):x}",
           lambda: "2001:0db8:85a3:0000:0000:8a2e:0370:" + f"{c.rng.randint(0, 0xffff):04x}",
           lambda: f"fe80::{c.rng.randint(1, 0xffff):x}:{c.rng.randint(1, 0xffff):x}",
           lambda: f"::ffff:192.0.2.{c.rng.randint(1, 254)}"]
    for i in range(16):
        c.pos("ip", "v6" if ":" in (ip := ips[i % len(ips)]()) else "v4", ip_ctx[i % len(ip_ctx)], (ip, "ip"))

    hexdigits = "0123456789abcdef"
    secrets = [
        ("openai", "my key {} stopped working", lambda: "sk-proj-" + c.token(28)),
        ("affinage", "using {} from the dashboard", lambda: "afk_" + c.token(24)),
        ("github", "token {} leaked?", lambda: "ghp_" + c.token(36)),
        ("aws", "access key {} in the logs", lambda: "AKIA" + c.token(16, string.ascii_uppercase + string.digits)),
        ("slack", "bot {} is not posting", lambda: f"xoxb-{c.digits(10)}-{c.token(12)}"),
        ("bearer", "Authorization: Bearer {}", lambda: f"eyJ{c.token(20)}.{c.token(16)}"),
        ("password", "password: {}", lambda: c.pick(["hunter", "Sunflower", "dragon", "qwerty"]) + c.digits(3)),
        ("api-key", "api_key={}", lambda: c.token(32, hexdigits)),
        ("token-is", "The token is {} now", lambda: c.token(24, hexdigits)),
    ]
    for i in range(18):
        form, template, make = secrets[i % len(secrets)]
        c.pos("secret", form, template, (make(), "secret"))

    for kind, form, template, pii in HARD_POSITIVES:
        c.pos(kind, form, template, (pii, kind))

    for i in range(10):
        address, number = addresses[i], c.card("4", 16)
        phone = f"+44 20 7946 {c.digits(4)}"
        ssn = c.ssn()
        if i % 2:
            c.pos("mixed", "email+card+phone", "I'm {}, card {}, call {}.",
                  (address, "email"), (fours(number, "."), "card"), (phone, "phone"))
        else:
            c.pos("mixed", "ssn+iban+obfuscated-email", "SSN {}; IBAN {}; mail {}",
                  (f"{ssn[:3]}-{ssn[3:5]}-{ssn[5:]}", "ssn"), (fours(c.iban(c.pick(countries))), "iban"),
                  (spelled(address, " at ", " dot "), "email"))


def negatives(c: Corpus) -> None:
    for sep_name, sep in [("spaces", " "), ("dashes", "-"), ("dots", "."), ("none", "")]:
        for template in ["order {} failed", "Order no. {} has not shipped", "tracking {} shows nothing",
                         "invoice {} is wrong", "reference {} from the bank", "case {} still open",
                         "membership {} expired"]:
            while luhn_valid(number := c.digits(16)):
                pass
            c.neg("card", f"order-number-{sep_name}", template, fours(number, sep))
    for isbn in ["978-3-16-148410-0", "9783161484100", "978-0-306-40615-7", "9780306406157", "ISBN 0-306-40615-2"]:
        c.neg("card", "isbn", "see the book {} for details", isbn)

    for form, make in [("area-000", lambda: "000" + c.digits(6)), ("area-666", lambda: "666" + c.digits(6)),
                       ("area-9xx", lambda: f"9{c.digits(2)}{c.rng.randint(10, 49)}{c.digits(4)}"),
                       ("group-00", lambda: f"{c.rng.randint(100, 665)}00{c.rng.randint(1, 9999):04d}"),
                       ("serial-0000", lambda: f"{c.rng.randint(100, 665)}{c.rng.randint(10, 99)}0000")]:
        for i, template in enumerate(["ticket {} closed", "example SSN {} from the form", "ref {}",
                                      "the sample shows {}", "part {} is out of stock", "test value {}"]):
            number = make()
            if ssn_valid(number):
                raise ValueError(f"generated negative SSN {number!r} is valid")
            sep = " " if i == 3 else "-"
            c.neg("ssn", form, template, f"{number[:3]}{sep}{number[3:5]}{sep}{number[5:]}")

    countries = list(BBANS)
    for i in range(24):
        iban = c.iban(countries[i % len(countries)])
        if i % 3 == 0:  # one digit of the account changed: mod 97 catches every single-digit error
            at = next(j for j in range(len(iban) - 1, 4, -1) if iban[j].isdigit())
            iban = iban[:at] + str((int(iban[at]) + 1 + c.rng.randint(0, 7)) % 10) + iban[at + 1:]
        elif i % 3 == 1:  # check digits swapped
            iban = iban[:2] + iban[3] + iban[2] + iban[4:] if iban[2] != iban[3] else iban[:2] + "00" + iban[4:]
        else:  # two adjacent account characters transposed
            at = c.rng.randint(5, len(iban) - 3)
            while iban[at] == iban[at + 1]:
                at += 1
            iban = iban[:at] + iban[at + 1] + iban[at] + iban[at + 2:]
        if iban_valid(iban):
            raise ValueError(f"generated negative IBAN {iban!r} is valid")
        c.neg("iban", "bad-checksum", c.pick(["IBAN: {}", "the form rejected {}", "is {} right?"]),
              fours(iban) if i % 2 else iban)
    for text in ["XY12 3456 7890 1234 5678 90", "ZZ00 1111 2222 3333 4444", "DE89 3704 0044 0532 0130",
                 "AT20 and then more words"]:
        c.neg("iban", "wrong-country-or-length", "code {} on the letter", text)

    prose = [
        "Please look at the docs, dot the i's and cross the t's.", "Meet me at 10 at the office.",
        "Our team is at the conference in Berlin this week.", "That was back in the dot com era.",
        "Click the blue dot at the top of the page.", "I bought it at amazon.com last year.",
        "See the guide at help.example.com for the steps.", "Read the FAQ at docs.example.org first.",
        "Point at the dot in the logo to open the menu.", "It worked at Amazon dot com but not here.",
        "Follow @acme_support on Twitter for outages.", "The route is declared with @app.route('/login').",
        "Use decorators like @property and @staticmethod.", "We are at version 2 dot 1 now.",
        "Look at example dot com, it has the same bug.", "Contact us at support.example.com any time.",
        "The status page at status.example.com says all good.", "We arrived at noon and left at 3.",
        "Available at example dot com and in stores.", "Sign up at app.example.io to try it.",
        "Priced at 9.99 at most stores.", "I'm at home. Com- plaints can wait.", "Log in at portal.example.net.",
        "Our office at 5th Avenue dot matrix printer is broken.", "stay at the hotel dot in the map",
        "Type the dot at the end of the name.", "He is at lunch; the dot product is wrong.",
        "Start at page 3 and stop at page 9.", "Click on the @ sign at the top.", "The @ and . keys are stuck.",
        "score was 3 at half time", "Retry at 14.30 tomorrow.", "It's at 100% now, dot the progress bar.",
        "Meet at the cafe, example.com has the address.", "email templates at docs.example.com explain it",
    ]
    for text in prose:
        c.neg("email", "at-dot-prose", "{}", text)

    other = [
        ("date", ["On 2024-05-01 it broke", "since 01.05.2024", "from 01/05/2024 10:30", "by 31-12-2024 12:00",
                  "on May 1, 2024 at 10:30"]),
        ("version", ["upgrade to 10.0.19045.2965", "python 3.11.7 here", "v2.4.1 broke it", "release 1.2.3",
                     "firmware 4.11.1111 update"]),
        ("price", ["it costs $1,299.99", "1.299,00 € per year", "5 500 users at 12.50 each", "EUR 4.111.111",
                   "total 1 000 000 rows"]),
        ("ticket", ["ticket #123456", "INC0012345 is open", "TCK-2024-000123 reopened", "see JIRA-4521",
                    "case 00123456 escalated"]),
        ("time", ["at 10:30:00 UTC", "took 00:12:45", "timeout 30s at 12:00:01"]),
        ("code", ["error 0x80070005", "HTTP 404 after 3 days", "exit code 137", "port 8080 is busy",
                  "resolution 1920x1080"]),
        ("identifier", ["id 123e4567-e89b-12d3-a456-426614174000", "UUID 550e8400-e29b-41d4-a716-446655440000",
                        "commit a94a8fe5ccb19ba61c4c0873d391e987982fbbd3", "colour #FF5733", "sku 12-3456-7890"]),
        ("short-number", ["ext. 1234", "PIN length is 6", "room 0.12", "building 7, floor 3", "zip 10115"]),
    ]
    for form, texts in other:
        for text in texts:
            c.neg("phone", form, "{}", text)
    for _ in range(10):
        c.neg("phone", "order-digits", "order {} shipped", c.digits(c.rng.randint(6, 8)))

    for text in ["not an address: 999.1.1.1", "octet 1.2.3.256 is invalid", "version 3.11.7", "2.4.10 release",
                 "10.0.19045.2965", "see section 4.2.1.3.5", "time 10:30:00", "mac-like 00:1A:2B:3C:4D:5E",
                 "ratio 16:9:4", "version v1.2.3.4-beta", "scale 1.25.0", "build 2024.05.01"]:
        c.neg("ip", "version-or-invalid", "{}", text)

    for text in ["the token is documented-in-settings", "tokens: 1500", "reset your password: go to Settings",
                 "api_key=YOUR_API_KEY", "password: ********", "Bearer token expired", "secret key rotation is weekly",
                 "sk-learn is a typo for scikit-learn", "the access token lasts 3600 seconds", "password=[SECRET]",
                 "AKIA prefix means an AWS key", "ghp_ tokens are GitHub's"]:
        c.neg("secret", "keyword-prose", "{}", text)

    for kind, form, text in HARD_NEGATIVES:
        c.neg(kind, form, "{}", text)
    for text in ["Thanks 👩\u200d💻 for the help", "family 👨\u200d👩\u200d👧 plan", "infor\u00admation page",
                 "zero\u200bwidth in a word", "BOM\ufeff at start"]:
        c.neg("email", "invisible-in-prose", "{}", text)


def generate(seed: int = SEED) -> list[dict]:
    corpus = Corpus(seed)
    positives(corpus)
    negatives(corpus)
    return corpus.records


def write_corpus(records: list[dict], path: Path) -> None:
    from affinage.core.atomic import atomic_write_text

    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=True) + "\n" for r in records))  # invisibles show


def fmt(rate: float | None) -> str:
    return "n/a" if rate is None else f"{rate:.3f}"


def section(result: dict, records: list[dict], argv: list[str], load: float | None, seconds: float,
            matches_generator: bool, corpus: Path) -> str:
    passed = (result["recall"] or 0) >= TARGET_RECALL and (result["precision"] or 0) >= TARGET_PRECISION
    origin = "the same as" if matches_generator else "DIFFERENT from"
    lines = [START, "## PII redaction: recall and precision on a labelled corpus (bench/pii_recall.py)", "",
             f"`{command_line(__file__, argv)}` on {cpu_model()} ({nproc()} cores), load average "
             f"{'n/a' if load is None else f'{load:.1f}'} at the start. Corpus `{corpus.relative_to(ROOT)}`: "
             f"{result['positives']} texts with PII and {result['negatives']} near-miss texts without, "
             f"{origin} what the generator makes from seed {SEED}; scoring all {len(records)} texts (redaction "
             f"included) took {seconds * 1000:.0f} ms.", "",
             "Recall: share of positives whose every labelled span is gone from the redacted text; exact: only "
             "the spans were replaced, each by one placeholder. Precision: share of near-miss negatives returned "
             "unchanged (every negative a kind is listed against is something that could be mistaken for it). "
             "The corpus was written alongside the detector: it measures the forms listed here, not forms nobody "
             "thought of, so read it as a regression floor rather than an estimate of recall on real traffic.", "",
             f"**Target recall >= {TARGET_RECALL} at precision >= {TARGET_PRECISION}: "
             f"{'PASS' if passed else 'FAIL'}** (recall {fmt(result['recall'])}, precision "
             f"{fmt(result['precision'])}).", "",
             "| kind | positives | caught | recall | exact | near-misses | unchanged | precision |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for kind, row in [*result["kinds"].items(), ("**all**", result)]:
        lines.append(f"| {kind} | {row['positives']} | {row['caught']} | {fmt(row['recall'])} | {row['exact']} | "
                     f"{row['negatives']} | {row['unchanged']} | {fmt(row['precision'])} |")
    lines += ["", "Per form: positives caught / total, near-misses unchanged / total.", "",
              "| kind | positive forms | near-miss forms |", "|---|---|---|"]
    for kind in result["kinds"]:
        cells = []
        for label, hit, total in [("positive", "caught", "positives"), ("negative", "unchanged", "negatives")]:
            forms = [(name.split("/", 1)[1], row) for name, row in result["forms"].items()
                     if name.startswith(f"{label}:{kind}/")]
            cells.append(", ".join(f"{form} {row[hit]}/{row[total]}" for form, row in forms) or "—")
        lines.append(f"| {kind} | {cells[0]} | {cells[1]} |")
    for title, rows in [("Positives missed", result["misses"]), ("Negatives changed", result["false_positives"]),
                        ("Positives caught but not exactly", result["inexact"])]:
        if rows:
            lines += ["", f"{title} (text → redacted):", ""]
            lines += [f"- {r['id']}: {json.dumps(r['text'], ensure_ascii=True)} → "
                      f"{json.dumps(r['redacted'], ensure_ascii=True)}" for r in rows]
    lines.append(END)
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=CORPUS, help="corpus JSONL (default bench/pii_corpus.jsonl)")
    parser.add_argument("--write-corpus", action="store_true", help="regenerate the corpus file from the seed first")
    parser.add_argument("--no-write", action="store_true", help="print the section, leave BENCHMARKS.md alone")
    args = parser.parse_args()
    load = load_average()
    generated = generate(SEED)
    if args.write_corpus:
        write_corpus(generated, args.corpus)
    records = load_corpus(args.corpus)
    matches = records == generated
    if not matches:
        print(f"warning: {args.corpus} differs from what the generator makes; rerun with --write-corpus",
              file=sys.stderr)
    started = time.perf_counter()
    result = score(records)
    seconds = time.perf_counter() - started
    text = section(result, records, sys.argv[1:], load, seconds, matches, args.corpus.resolve())
    return publish(text, "pii_recall", write=not args.no_write)


if __name__ == "__main__":
    raise SystemExit(main())
