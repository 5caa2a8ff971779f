"""PII and secret redaction, applied before anything becomes training data, a gate set or a log a person reads."""

from __future__ import annotations

import ipaddress
import math
import re
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from affinage.core.checksums import (
    IBAN_LENGTHS,
    compact_iban,
    iban_valid,
    luhn_valid,
    ssn_valid,
)

# A generated token: URL-safe/base64 characters and dots (JWTs), not ending in a dot (end of sentence).
_SECRET_TOKEN = r"[A-Za-z0-9_\-./+=]{11,}[A-Za-z0-9_\-/+=]"
_SECRETS = (
    re.compile(r"\bsk-(?:proj-|ant-)?[A-Za-z0-9_\-]{20,}"),  # OpenAI / Anthropic style
    re.compile(r"\bafk_[A-Za-z0-9_\-]{16,}"),  # this project's own API keys
    re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,})"),  # GitHub tokens
    re.compile(r"\bAKIA[0-9A-Z]{16}\b"),  # AWS access key ids
    re.compile(r"\bxox[abprs]-[A-Za-z0-9\-]{10,}"),  # Slack tokens
)
# Only the value after these is replaced, so "Authorization: Bearer [SECRET]" still reads as what it was.
_BEARER = re.compile(rf"(\bBearer\s+)({_SECRET_TOKEN})", re.IGNORECASE)
_PASSWORD = re.compile(
    r"""(\b(?:password|passwd|pwd|passphrase)\s*[:=]\s*)(?!\[[A-Z]+\])(?=\S*[A-Za-z0-9])(\S{3,}[^\s.,;:!?)\]"'])""",
    re.IGNORECASE
)
# "api_key=…", "token: …", "client secret is …": the value must look generated (long, letters and digits mixed),
# so "the token is documented-in-settings" is left alone.
_KEYWORD_SECRET = re.compile(
    r"(\b(?:api[_ -]?key|apikey|access[_ -]?key|secret(?:[_ -]?key)?|client[_ -]?secret"
    r"|(?:access[_ -]?|auth[_ -]?)?token)"
    rf"\s*(?:[:=]|\bis\b)\s*[\"']?)({_SECRET_TOKEN})",
    re.IGNORECASE,
)
# Letters of any script ("müller@example.de"); the TLD is ASCII (IDNs travel as punycode, "xn--...").
_ALNUM = r"[^\W_]"
_EMAIL = re.compile(rf"(?<![\w.%+-]){_ALNUM}[\w.%+-]*@{_ALNUM}(?:(?:{_ALNUM}|-)*{_ALNUM})?"
                    rf"(?:\.{_ALNUM}(?:(?:{_ALNUM}|-)*{_ALNUM})?)*\.[A-Za-z]{{2,}}\b")
# An address written to dodge scrapers: "bob.pii at example dot com", "bob [at] example [dot] com",
# "bob(at)example(dot)com", "bob -at- example -dot- com", "bob @ example . com". Marks never share characters
# with labels (labels end in a letter or digit, fenced marks need spaces round them), so every text has one parse;
# at most six labels a side keeps a long "a dot a dot ..." linear.
_TLDS = ("com|org|net|edu|gov|mil|int|info|biz|name|pro|io|co|uk|de|fr|nl|es|it|be|ch|at|se|no|dk|fi|pl|ie|pt|"
         "cz|gr|hu|ro|ru|ua|tr|il|ca|us|mx|br|ar|au|nz|jp|cn|kr|in|sg|hk|za|eu|me|dev|app|ai|tv|cloud|email|"
         "example|test|local|mail")
# TLDs that are also English words: after a spelled " dot " they need a stronger sign ("point at the dot in it").
_WORD_TLDS = {"at", "be", "in", "is", "it", "me", "no", "us", "name", "pro", "app", "email", "mail", "local", "test"}


def _mark(word: str, symbol: str) -> str:
    return (rf"(?:\s*[\[({{<]\s*(?:{word}|{symbol})\s*[\])}}>]\s*"  # [at] (at) {at} <at> [@] [.]
            rf"|\s+[-_*#|~]+{word}[-_*#|~]+\s+"  # -at- _dot_ *at*
            rf"|\s+{word}\s+)")  # a bare word


_AT_MARK = r"(?:" + _mark("at", "@") + r"|\s+@\s+|@|\uff20)"  # \uff20: the full-width at sign
_DOT_MARK = r"(?:" + _mark("dot", r"\.") + r"|\s+\.\s+|\.)"
_LOCAL_LABEL = r"[a-z0-9](?:[a-z0-9_%+-]*[a-z0-9])?"
_HOST_LABEL = r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?"
_OBFUSCATED_EMAIL = re.compile(
    rf"(?<![\w.%+@'’-])(?P<local>{_LOCAL_LABEL}(?:{_DOT_MARK}{_LOCAL_LABEL}){{0,5}})(?P<at>{_AT_MARK})"
    rf"(?P<domain>{_HOST_LABEL}(?:{_DOT_MARK}{_HOST_LABEL}){{0,5}}(?P<last_dot>{_DOT_MARK})(?P<tld>{_TLDS}))(?![\w@-])",
    re.IGNORECASE,
)
_EMAIL_CONTEXT = re.compile(r"\b(?:e-?mail(?:ed)?|mail|contact|reach|write|address|send|inbox|log(?:ged)? ?in|"
                            r"sign(?:ed)? ?(?:in|up)|account|user ?name|login|registered|b?cc)\b", re.IGNORECASE)
_DETERMINER_BEFORE = re.compile(r"\b(?:a|an|the|this|that|these|those|our|your|its|their)\s+$", re.IGNORECASE)
# A file name is not a local part: "the README.md at github.com".
_FILE_SUFFIX = re.compile(r"\.(?:md|txt|py|js|ts|json|ya?ml|toml|ini|cfg|html?|css|pdf|csv|xml|log|sh|png|jpe?g|gif|"
                          r"zip|exe|docx?|xlsx?)$", re.IGNORECASE)
# Words that often stand before a plain " at " in ordinary English ("look at", "worked at", "it at"): with
# only bare-word marks and no e-mail context, such a "local part" is read as prose, not as an address.
_PROSE_BEFORE_AT = frozenset(
    "look looks looked looking see seen saw check checked point points pointed aim aimed stare glance click "
    "me us him her them it you i we they this that these those one ones is was are were be been am "
    "work works worked working job jobs shop shopped shopping buy bought sell sold sale order ordered "
    "available live lives lived living stay stayed staying meet met arrive arrived start started starting "
    "found find located based hosted host posted published listed online only here there up down in out "
    "off on again now docs page guide site website faq help support info team price prices deal deals "
    "offer offers cheaper cheap best good bad great home office school".split())
# An SSN shape: three digits, two, four, with one kind of separator (none only when a word says it is an SSN).
_SSN = re.compile(r"(?<![\w.+-])(?<!\d )\d{3}(?P<sep>[-. ])\d{2}(?P=sep)\d{4}(?![.-]?\d)(?! \d)(?!\w)")
_SSN_SHAPE = re.compile(r"\d{3}([-. ])\d{2}\1\d{4}")
_SSN_BY_CONTEXT = re.compile(
    r"(\b(?:ssn|ss#|social[ -]security)(?:[ -]?(?:number|no\.?|#))?\s*(?:is|was|:|=|-)?\s*)"
    r"(\d{3}[ .-]?\d{2}[ .-]?\d{4})(?![.-]?\d)",
    re.IGNORECASE,
)
# Compact or printed in groups ("DE89 3704 0044 0532 0130 00"): one space, no-break space or dash may sit
# between any two characters; the country fixes how many characters there are.
_IBAN = re.compile(
    r"(?<![A-Za-z0-9])(?:" + "|".join(
        rf"(?:{'|'.join(sorted(c for c, n in IBAN_LENGTHS.items() if n == length))})\d{{2}}"
        rf"(?:[ \u00a0-]?[A-Za-z0-9]){{{length - 4}}}"
        for length in sorted(set(IBAN_LENGTHS.values()))) + r")(?![A-Za-z0-9])",
    re.IGNORECASE,
)
# The letters-and-digits groups of an IBAN just before a number: a bad IBAN's tail is not a card of its own.
_IBAN_HEAD = re.compile(r"(?<![A-Za-z0-9])[A-Za-z]{2}\d{2}(?:[ \u00a0-]?[A-Za-z0-9]{4})*[ \u00a0-]?$")
# 13–19 digits, single spaces (no-break too), dashes or dots between them, not part of a longer run of digits.
_CARD = re.compile(r"(?<![\w+-])(?<!\d[ .\u00a0])\d(?:[ .\u00a0-]?\d){12,18}(?![ .\u00a0-]?\d)(?!\w)")
_IPV6 = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:\d{1,3}(?:\.\d{1,3}){3}|[0-9A-Fa-f]{0,4})(?![\w:.]*\w)")
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = re.compile(rf"(?<![\w.]){_OCTET}(?:\.{_OCTET}){{3}}(?!\.?\w)")
# Phones need a shape, not just digits: +country code, North American 3-3-4, or a national number with a
# leading 0 and one kind of separator. A run that touches more digits is left whole (never a partial number).
_PHONE = re.compile(
    r"(?<![\w+.-])(?<!\d[ .-])(?:"
    r"\+\d{1,3}(?:[ .-]?\(?\d{1,4}\)?){2,5}"
    r"|(?:1[ .-])?(?:\(\d{3}\) ?|\d{3}[ .-])\d{3}[ .-]\d{4}"
    r"|0\d{1,4}(?P<sep>[ /-])\d{2,8}(?:(?P=sep)\d{2,8}){0,3}"
    r")(?![.-]?\d)(?! \d)"
)
# "call me at 5550199876": a bare run of digits counts only right after a word that says it is a phone number.
_PHONE_BY_CONTEXT = re.compile(
    r"(\b(?:phone|tel|telephone|mobile|cell|call|text|fax|whatsapp)\b(?:\s+(?:me|us|number|no\.?|#))?"
    r"\s*(?:at|on|is|:)?\s*)(\+?\d{7,15})(?!\d)",
    re.IGNORECASE,
)
_DATE_LIKE = re.compile(r"\d{1,4}([./-])\d{1,2}\1\d{2,4}(?!\d)")
# Characters that print as nothing: looked through when matching ("bob\u200b@example.com" is an address), and
# dropped with the span they sit in; elsewhere (an emoji's zero-width joiner, a soft hyphen) they stay.
_INVISIBLE = re.compile("[\u00ad\u180e\u200b\u200c\u200d\u2060\ufeff]")
_PLACEHOLDER = {"secret": "[SECRET]", "email": "[EMAIL]", "iban": "[IBAN]", "card": "[CARD]", "ssn": "[SSN]",
                "ip": "[IP]", "phone": "[PHONE]"}


def _is_iban(text: str) -> bool:
    """Mod-97 valid, and an account number that is mostly digits (as every registered format is), so that a
    country code and two digits followed by words cannot pass by chance."""
    bban = compact_iban(text)[4:]
    return iban_valid(text) and sum(c.isdigit() for c in bban) * 2 >= len(bban)


def _is_card(match: re.Match) -> bool:
    text = match.group(0)
    digits = re.sub(r"\D", "", text)
    separators = set(re.findall(r"\D", text))
    groups = re.split(r"\D", text)
    if not 13 <= len(digits) <= 19 or not luhn_valid(digits):
        return False
    if "." in separators and len(separators) > 1:  # dots are not mixed with other separators
        return False
    if len(groups) > 1 and min(map(len, groups)) < 3:  # "978-3-16-148410-0" is grouped as no card is
        return False
    if len(digits) == 13 and digits[:3] in ("978", "979"):  # an ISBN-13, not a card
        return False
    return not _IBAN_HEAD.search(match.string, 0, match.start())


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return any(c.isalnum() for c in text)


def _is_phone(text: str) -> bool:
    digits = sum(c.isdigit() for c in text)
    if _DATE_LIKE.match(text) or _SSN_SHAPE.fullmatch(text):  # an invalid SSN is not a phone number either
        return False
    if text.startswith("+"):
        return 7 <= digits <= 15
    if text.startswith("0"):
        return 9 <= digits <= 13
    return digits in (10, 11)


def _is_obfuscated_email(match: re.Match) -> bool:
    """Marks a person would only write to hide an address ("@", "[at]", "(dot)", "-at-") decide at once; a bare
    " at " needs more: a local part with letters and an address's punctuation or digits (not a file name), or
    one that is not everyday prose nor after "a"/"the", with an e-mail word just before or a spelled " dot "
    before a TLD that is not also a word. "ping sam at example.com" stays: it reads as "the FAQ at help.example.com"."""
    at = match.group("at").strip().lower()
    if at != "at" or re.search(r"[\[({<*#|~_]", match.group("domain")):
        return True
    local = match.group("local")
    if not re.search(r"[^\W\d_]", local) or _FILE_SUFFIX.search(local):  # "3.12 at python.org", "README.md at"
        return False
    if re.search(r"[._%+\d\s]", local):  # "bob.pii", "jane dot doe", "pat99"
        return True
    before = match.string[max(0, match.start() - 40):match.start()]
    if local.lower() in _PROSE_BEFORE_AT or _DETERMINER_BEFORE.search(before):  # "a follow-up at", "the page at"
        return False
    if _EMAIL_CONTEXT.search(before):
        return True
    return match.group("last_dot").strip().lower() == "dot" and match.group("tld").lower() not in _WORD_TLDS


def _sub(pattern: re.Pattern, replace: Callable[[re.Match], str], text: str) -> str:
    """``pattern.sub(replace, text)`` matched on the text without invisible characters; a replaced span loses
    the ones inside it, text left alone keeps every character it had."""
    if not _INVISIBLE.search(text):
        return pattern.sub(replace, text)
    visible = [i for i, char in enumerate(text) if not _INVISIBLE.match(char)]
    view = "".join(text[i] for i in visible)
    pieces, done = [], 0
    for match in pattern.finditer(view):
        new = replace(match)
        if new == match.group(0) or match.end() == match.start():
            continue
        start, end = visible[match.start()], visible[match.end() - 1] + 1
        pieces += [text[done:start], new]
        done = end
    return "".join([*pieces, text[done:]])


def redact_pii(text: str, keep: Collection[str] = ()) -> tuple[str, dict[str, int]]:
    """Replace emails, IBANs, card numbers, US Social Security numbers, IP addresses, phone numbers and secrets
    by ``[EMAIL]``, ``[IBAN]``, ``[CARD]``, ``[SSN]``, ``[IP]``, ``[PHONE]`` and ``[SECRET]``; return the text
    and how many of each kind were replaced.

    Secrets go first (they may contain digits that look like a phone), then emails (obfuscated ones too: "bob
    at example dot com", "bob [at] example [dot] com"), IBANs (country length and mod-97 check), cards (Luhn
    check, any of space, dash, dot or no separator: a 16-digit order number stays), SSNs (dashed or spaced,
    bare digits only after "SSN"; never-issued numbers stay), IPv6, IPv4 and phones. Invisible characters
    (zero-width space/joiners, word joiner, BOM, soft hyphen) are looked through. Placeholders hold no
    digits, so a second pass changes nothing. ``keep`` lists exact strings (case-insensitive) to leave alone,
    such as the public support address the knowledge base itself gives.
    """
    kept = {k.lower() for k in keep}
    counts: Counter[str] = Counter()

    def whole(kind: str, accept: Callable[[re.Match], bool] = lambda _: True) -> Callable[[re.Match], str]:
        def replace(match: re.Match) -> str:
            found = match.group(0)
            if found.lower() in kept or not accept(match):
                return found
            counts[kind] += 1
            return _PLACEHOLDER[kind]
        return replace

    def value(kind: str, accept: Callable[[str], bool] = lambda _: True) -> Callable[[re.Match], str]:
        def replace(match: re.Match) -> str:
            found = match.group(2)
            if found.lower() in kept or not accept(found):
                return match.group(0)
            counts[kind] += 1
            return match.group(1) + _PLACEHOLDER[kind]
        return replace

    def text_of(check: Callable[[str], bool]) -> Callable[[re.Match], bool]:
        return lambda match: check(match.group(0))

    steps: list[tuple[re.Pattern, Callable[[re.Match], str]]] = [
        *[(pattern, whole("secret")) for pattern in _SECRETS],
        (_BEARER, value("secret")),
        (_PASSWORD, value("secret")),
        (_KEYWORD_SECRET, value("secret", _looks_generated)),
        (_EMAIL, whole("email")),
        (_OBFUSCATED_EMAIL, whole("email", _is_obfuscated_email)),
        (_IBAN, whole("iban", text_of(_is_iban))),
        (_CARD, whole("card", _is_card)),
        (_SSN_BY_CONTEXT, value("ssn", ssn_valid)),
        (_SSN, whole("ssn", text_of(ssn_valid))),
        (_IPV6, whole("ip", text_of(_is_ip))),
        (_IPV4, whole("ip")),
        (_PHONE, whole("phone", text_of(_is_phone))),
        (_PHONE_BY_CONTEXT, value("phone")),
    ]
    for pattern, replace in steps:
        text = _sub(pattern, replace, text)
    return text, dict(counts)


def _looks_generated(token: str) -> bool:
    """Letters and digits mixed with some variety: an API key, not an English word."""
    has_mix = any(c.isdigit() for c in token) and any(c.isalpha() for c in token)
    frequencies = Counter(token).values()
    entropy = -sum(n / len(token) * math.log2(n / len(token)) for n in frequencies)
    return has_mix and entropy >= 3.0


def redact_records(records: Sequence[Mapping[str, Any]], fields: Sequence[str] = ("question", "answer", "correction"),
                   keep: Collection[str] = ()) -> tuple[list[dict[str, Any]], int, dict[str, int]]:
    """``redact_pii`` over the named text fields of each record: a filter step that drops nothing and reports
    what it replaced. Missing or ``None`` fields are left as they are."""
    total: Counter[str] = Counter()
    out = []
    for record in records:
        copy = dict(record)
        for name in fields:
            if isinstance(copy.get(name), str):
                copy[name], counts = redact_pii(copy[name], keep)
                total.update(counts)
        out.append(copy)
    return out, 0, dict(total)


ERASED = "[erased]"  # what replaces erased text wherever it was quoted (signals, gate reports)
