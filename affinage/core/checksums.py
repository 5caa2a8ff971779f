"""Check digits of the identifiers redaction looks for: a number that fails its checksum is an example or a typo,
not someone's card, account or Social Security number."""

from __future__ import annotations

import re

# ISO 13616 registry: each country's IBAN length, which with the mod-97 check keeps random codes out.
IBAN_LENGTHS = {
    **dict.fromkeys(["NO"], 15), **dict.fromkeys(["BE"], 16),
    **dict.fromkeys(["DK", "FI", "FK", "FO", "GL", "NL", "SD"], 18),
    **dict.fromkeys(["MK", "SI"], 19), **dict.fromkeys(["AT", "BA", "EE", "KZ", "LT", "LU", "MN", "XK"], 20),
    **dict.fromkeys(["CH", "HR", "LI", "LV"], 21),
    **dict.fromkeys(["BG", "BH", "CR", "DE", "GB", "GE", "IE", "ME", "RS", "VA"], 22),
    **dict.fromkeys(["AE", "GI", "IL", "IQ", "OM", "SO", "TL"], 23),
    **dict.fromkeys(["AD", "CZ", "ES", "MD", "PK", "RO", "SA", "SE", "SK", "TN", "VG"], 24),
    **dict.fromkeys(["LY", "PT", "ST"], 25), **dict.fromkeys(["IS", "TR"], 26),
    **dict.fromkeys(["BI", "DJ", "FR", "GR", "IT", "MC", "MR", "SM"], 27),
    **dict.fromkeys(["AL", "AZ", "BY", "CY", "DO", "GT", "HU", "LB", "NI", "PL", "SV"], 28),
    **dict.fromkeys(["BR", "EG", "PS", "QA", "UA"], 29), **dict.fromkeys(["JO", "KW", "MU", "YE"], 30),
    **dict.fromkeys(["MT", "SC"], 31), **dict.fromkeys(["LC"], 32), **dict.fromkeys(["RU"], 33),
}


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum that every payment card number satisfies (spaces, dashes and dots are ignored)."""
    squashed = re.sub(r"[ .-]", "", digits)
    if not squashed.isdigit() or not squashed.isascii():
        raise ValueError(f"luhn_valid takes digits, got {digits!r}")
    total = 0
    for position, char in enumerate(reversed(squashed)):
        value = int(char)
        if position % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def ssn_valid(number: str) -> bool:
    """Whether nine digits (dashes, spaces or dots ignored) can be a US Social Security number: the SSA never
    issues area 000, 666 or 900-999, group 00 or serial 0000, so those are examples or typos, not PII."""
    digits = re.sub(r"[ .-]", "", number)
    if len(digits) != 9 or not digits.isdigit() or not digits.isascii():
        raise ValueError(f"ssn_valid takes nine digits, got {number!r}")
    area, group, serial = digits[:3], digits[3:5], digits[5:]
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


def iban_number(text: str) -> int:
    """Letters as 10..35 (A=10), digits as themselves: the integer ISO 13616 takes mod 97."""
    return int("".join(str(int(char, 36)) for char in text))


def compact_iban(text: str) -> str:
    compact = re.sub(r"[ \u00a0-]", "", text).upper()
    if not compact.isascii() or not compact.isalnum():
        raise ValueError(f"an IBAN holds letters and digits only, got {text!r}")
    return compact


def iban_check_digits(country: str, bban: str) -> str:
    """The two check digits of an IBAN (ISO 13616): 98 minus (BBAN + country + "00") mod 97."""
    if not (len(country) == 2 and country.isascii() and country.isalpha()):
        raise ValueError(f"country must be two letters, got {country!r}")
    return f"{98 - iban_number(compact_iban(bban) + country.upper() + '00') % 97:02d}"


def iban_valid(iban: str) -> bool:
    """Whether an IBAN (spaces, no-break spaces and dashes ignored) has its country's registered length and
    passes the mod-97 check: (BBAN + first four characters) mod 97 == 1. Random codes pass 1 time in 97."""
    compact = compact_iban(iban)
    if IBAN_LENGTHS.get(compact[:2]) != len(compact) or not compact[2:4].isdigit():
        return False
    return 2 <= int(compact[2:4]) <= 98 and iban_number(compact[4:] + compact[:4]) % 97 == 1
