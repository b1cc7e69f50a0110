"""When people can take a conversation over: opening hours (`SUPPORTLOOP_HANDOFF_HOURS`, in
`SUPPORTLOOP_HANDOFF_TIMEZONE`) and whether any staff console is connected (on any replica). Outside
them the widget says so and offers to leave an email instead of waiting."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, time
from zoneinfo import ZoneInfo

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_PART = re.compile(r"^\s*(?P<days>[a-z]{3}(?:-[a-z]{3})?)\s+(?P<start>\d{1,2}:\d{2})-(?P<end>\d{1,2}:\d{2})\s*$")


@dataclass(frozen=True)
class Hours:
    """Opening hours: per weekday (0 = Monday), the (start, end) ranges; none at all = always open."""

    ranges: tuple[tuple[int, time, time], ...]
    zone: str = "UTC"
    text: str = ""

    @classmethod
    def parse(cls, text: str, zone: str = "UTC") -> Hours:
        """`"mon-fri 09:00-17:30, sat 10:00-14:00"` (commas or semicolons); `""` = always. ValueError
        saying what is wrong otherwise."""
        ZoneInfo(zone)  # an unknown zone raises here, at start-up
        ranges = [r for part in re.split(r"[;,]", text.lower()) if part.strip() for r in _part(part)]
        return cls(tuple(ranges), zone, text.strip())

    def open_at(self, when: datetime | None = None) -> bool:
        if not self.ranges:
            return True
        local = (when or datetime.now(UTC)).astimezone(ZoneInfo(self.zone))
        now = local.time().replace(tzinfo=None)
        return any(day == local.weekday() and start <= now < end for day, start, end in self.ranges)

    def describe(self) -> str:
        return f"{self.text} ({self.zone})" if self.ranges else "any time"


def _part(part: str) -> list[tuple[int, time, time]]:
    found = _PART.match(part)
    if found is None:
        raise ValueError(f"cannot read {part.strip()!r}: write e.g. 'mon-fri 09:00-17:00, sat 10:00-14:00'")
    first, _, last = found["days"].partition("-")
    if first not in DAYS or (last or first) not in DAYS:
        raise ValueError(f"unknown day in {part.strip()!r}: use {', '.join(DAYS)}")
    start, end = (time.fromisoformat(found[k].zfill(5)) for k in ("start", "end"))
    if end <= start:
        raise ValueError(f"{part.strip()!r}: the end must come after the start")
    days = range(DAYS.index(first), DAYS.index(last or first) + 1)
    if not days:
        raise ValueError(f"{part.strip()!r}: the days run backwards")
    return [(day, start, end) for day in days]


@dataclass(frozen=True)
class Availability:
    available: bool
    message: str | None  # why not, for the customer


def availability(hours: Hours, agents_online: int, when: datetime | None = None) -> Availability:
    if not hours.open_at(when):
        return Availability(False, f"Our team is available {hours.describe()}.")
    if agents_online == 0:
        return Availability(False, "Nobody from our team is online right now.")
    return Availability(True, None)
