"""PII scrubbing on realistic support messages."""

from __future__ import annotations

import pytest

from feedback.pii import Scrubber, iban_valid, luhn_valid

scrub = Scrubber()


@pytest.mark.parametrize(
    "text, expected",
    [
        ("my email is John.Smith@mail.example.com, thanks", "my email is [EMAIL], thanks"),
        ("reach me: a_b-c+tag@sub.domain.org.", "reach me: [EMAIL]."),
        ("Call me on +1 (415) 555-0132 after 5", "Call me on [PHONE] after 5"),
        ("my mobile is 07700 900123", "my mobile is [PHONE]"),
        ("tel. +49 30 901820", "tel. [PHONE]"),
        ("phone 415.555.0132", "phone [PHONE]"),
        ("card 4111 1111 1111 1111 exp 12/27", "card [CARD] exp 12/27"),
        ("paid with 5500-0000-0000-0004", "paid with [CARD]"),
        ("amex 378282246310005!", "amex [CARD]!"),
        ("IBAN: GB82 WEST 1234 5698 7654 32 please refund", "IBAN: [IBAN] please refund"),
        ("de89370400440532013000 is my account", "[IBAN] is my account"),
    ],
)
def test_personal_data_becomes_typed_placeholders(text, expected):
    assert scrub(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "Order 1234567890123456 is on its way",  # 16 digits, fails Luhn: an order number, not a card
        "Check-in is from 3:30pm to 9:00pm on 2026-11-28 (or 28.11.2026).",
        "The room costs $1,250.00 for 3 nights; booking ref AB12-CD34.",
        "Flight LH 400 leaves at 10:45, gate B12.",
        "Use code SAVE20 at checkout, or visit https://example.com/help.",
    ],
)
def test_ordinary_text_is_left_alone(text):
    assert scrub(text) == text


def test_kinds_are_configurable():
    text = "mail a@b.com, card 4111111111111111"
    assert Scrubber(["email"])(text) == "mail [EMAIL], card 4111111111111111"
    assert Scrubber([])(text) == text
    with pytest.raises(ValueError, match="unknown PII kinds"):
        Scrubber(["ssn"])


def test_an_iban_with_a_wrong_check_digit_is_not_called_an_iban():
    assert "[IBAN]" not in scrub("GB00 WEST 1234 5698 7654 32")


def test_checksums():
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")
    assert iban_valid("GB82 WEST 1234 5698 7654 32") and not iban_valid("GB83 WEST 1234 5698 7654 32")
