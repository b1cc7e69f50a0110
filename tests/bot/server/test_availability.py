"""Opening hours for live handoff: parsing (with clear errors) and whether a person can come now."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from bot.server.availability import Hours, availability
from bot.server.settings import Settings

MONDAY_NOON_UTC = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)  # 13:00 in Paris
SATURDAY_EVENING_UTC = datetime(2026, 12, 12, 19, 30, tzinfo=UTC)


def test_no_hours_means_any_time():
    assert Hours.parse("").open_at(SATURDAY_EVENING_UTC) and Hours.parse("").describe() == "any time"


@pytest.mark.parametrize(
    ("when", "open_"),
    [(MONDAY_NOON_UTC, True), (SATURDAY_EVENING_UTC, False), (datetime(2026, 12, 12, 9, 30, tzinfo=UTC), True)],
)
def test_hours_are_read_in_their_time_zone(when, open_):
    hours = Hours.parse("mon-fri 09:00-17:30; sat 10:00-14:00", "Europe/Paris")
    assert hours.open_at(when) is open_  # Saturday 09:30 UTC is 10:30 in Paris


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("mon-fri 9-17", "cannot read"),
        ("mon-fry 09:00-17:00", "unknown day"),
        ("mon 17:00-09:00", "end must come after"),
        ("fri-mon 09:00-17:00", "run backwards"),
    ],  # fmt: skip
)
def test_unreadable_hours_are_refused_at_start_saying_what_is_wrong(text, problem):
    with pytest.raises(ValidationError, match=problem):
        Settings(handoff_hours=text)


def test_an_unknown_time_zone_is_refused_at_start():
    with pytest.raises(ValidationError, match="unknown time zone 'Mars/Olympus'"):
        Settings(handoff_timezone="Mars/Olympus")


def test_a_person_can_come_only_within_hours_and_with_a_console_online():
    hours = Hours.parse("mon-fri 09:00-17:00")
    assert availability(hours, 2, MONDAY_NOON_UTC).available
    closed = availability(hours, 2, SATURDAY_EVENING_UTC)
    assert not closed.available and closed.message == "Our team is available mon-fri 09:00-17:00 (UTC)."
    nobody = availability(hours, 0, MONDAY_NOON_UTC)
    assert not nobody.available and nobody.message == "Nobody from our team is online right now."
