"""Personal data scrubbing for everything exported for training.

Emails, phone numbers, payment card numbers (only digit runs that pass the Luhn check) and IBANs (only
strings that pass the ISO 13616 mod-97 check) become typed placeholders such as `[EMAIL]`. Checksums
keep order numbers, dates and prices intact. Which kinds are scrubbed is configurable.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

KINDS = ("iban", "card", "email", "phone")  # applied in this order: the most specific first

_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+(?:'[A-Za-z0-9._%+-]+)*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
# Compact (DE89370400440532013000) or printed in groups of four (GB82 WEST 1234 5698 7654 32).
_IBAN = re.compile(
    r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?:[A-Z0-9]{11,30}|(?: [A-Z0-9]{4}){2,7}(?: [A-Z0-9]{1,4})?)"
    r"(?![A-Za-z0-9])",
    re.IGNORECASE,
)
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
# An optional +country code (which may be followed by a one-digit group, as in +33 6 12 34 56 78), then at
# least 7 digits in groups separated by spaces, dots, dashes or a parenthesised area code; at most 15
# digits (E.164).
_PHONE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}(?:[ .-]?\d(?=[ .-]))?[ .-]?)?(?:\(\d{1,5}\)[ .-]?)?\d{2,5}(?:[ .-]?\d{2,5}){1,4}(?![\w])"
)

_DATE = re.compile(r"\d{4}-\d{2}-\d{2}|\d{2}[./-]\d{2}[./-]\d{4}")


def luhn_valid(digits: str) -> bool:
    total = 0
    for i, char in enumerate(reversed(digits)):
        d = int(char)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_valid(candidate: str) -> bool:
    iban = re.sub(r"\s", "", candidate).upper()
    if not 15 <= len(iban) <= 34 or not iban[:2].isalpha() or not iban[2:4].isdigit():
        return False
    rearranged = iban[4:] + iban[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def _digits(text: str) -> str:
    return re.sub(r"\D", "", text)


def _replace(pattern: re.Pattern[str], placeholder: str, keep: Callable[[str], bool]) -> Callable[[str], str]:
    def scrub(text: str) -> str:
        return pattern.sub(lambda m: placeholder if keep(m.group(0)) else m.group(0), text)

    return scrub


_SCRUBBERS: dict[str, Callable[[str], str]] = {
    "iban": _replace(_IBAN, "[IBAN]", iban_valid),
    "card": _replace(_CARD, "[CARD]", lambda s: 13 <= len(_digits(s)) <= 19 and luhn_valid(_digits(s))),
    "email": _replace(_EMAIL, "[EMAIL]", lambda _s: True),
    "phone": _replace(_PHONE, "[PHONE]", lambda s: 7 <= len(_digits(s)) <= 15 and not _DATE.fullmatch(s)),
}


class Scrubber:
    """Replaces the personal data of the configured `kinds` in text (all kinds by default)."""

    def __init__(self, kinds: Iterable[str] = KINDS) -> None:
        unknown = set(kinds) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown PII kinds {sorted(unknown)}; known: {', '.join(KINDS)}")
        self.kinds = [k for k in KINDS if k in set(kinds)]

    def __call__(self, text: str) -> str:
        for kind in self.kinds:
            text = _SCRUBBERS[kind](text)
        return text

    def messages(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{**m, "content": self(m["content"])} for m in messages]
