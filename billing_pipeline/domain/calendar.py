"""The practice's clock: local dates and the instants at which each night's steps happen.

A night is a service date D. Its steps happen in the account's own timezone on D+1: bills,
superbills and statements at 00:00, AutoPay 30 minutes later. Every instant here is aware and
in UTC; a local date is only ever computed in the account's zone.
"""

from __future__ import annotations

import calendar as _calendar
from datetime import UTC, date, datetime, time, timedelta
from functools import cache, lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

LOOKBACK_DAYS = 90
AUTOPAY_OFFSET = timedelta(minutes=30)


class UnknownTimezone(ValueError):
    """A timezone name that is not in the IANA database."""


@cache
def _known_zones() -> frozenset[str]:
    return frozenset(available_timezones())


@lru_cache(maxsize=512)
def zone(name: str) -> ZoneInfo:
    """The IANA zone called `name`; refuses anything that is not a real IANA name."""
    if name not in _known_zones():
        raise UnknownTimezone(f"unknown IANA timezone {name!r}")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:  # pragma: no cover - guarded above
        raise UnknownTimezone(f"unknown IANA timezone {name!r}") from exc


def require_aware(instant: datetime, what: str = "instant") -> datetime:
    if instant.tzinfo is None or instant.utcoffset() is None:
        raise ValueError(f"{what} {instant.isoformat()!r} has no UTC offset")
    return instant.astimezone(UTC)


def local_date(instant: datetime, tz: str) -> date:
    """The calendar date of `instant` on the wall clocks of zone `tz`."""
    return require_aware(instant).astimezone(zone(tz)).date()


def start_of_day(day: date, tz: str) -> datetime:
    """The first instant of `day` in zone `tz`, in UTC.

    Where midnight does not exist (a zone that springs forward at 00:00), the day starts at the
    transition; zoneinfo resolves the missing wall time with the offset in force before it,
    which names exactly that instant.
    """
    wall = datetime.combine(day, time(0), tzinfo=zone(tz))
    return wall.astimezone(UTC)


def bills_instant(night: date, tz: str) -> datetime:
    """00:00 local on the day after the service date: bills, superbills, statements."""
    return start_of_day(night + timedelta(days=1), tz)


def autopay_instant(night: date, tz: str) -> datetime:
    """AutoPay runs 30 minutes after the bills step (00:30 local on an ordinary day)."""
    return bills_instant(night, tz) + AUTOPAY_OFFSET


def lookback_start(night: date) -> date:
    """The oldest local session date a night still bills (90 days before the night)."""
    return night - timedelta(days=LOOKBACK_DAYS)


def in_lookback(session_date: date, night: date) -> bool:
    return lookback_start(night) <= session_date <= night


def last_day_of_month(year: int, month: int) -> int:
    return _calendar.monthrange(year, month)[1]


def is_month_end(night: date) -> bool:
    return night.day == last_day_of_month(night.year, night.month)


def month_key(year: int, month: int) -> str:
    return f"{year:04d}-{month:02d}"


def previous_month(day: date) -> tuple[int, int]:
    first = day.replace(day=1)
    prev = first - timedelta(days=1)
    return prev.year, prev.month


def month_of(day: date) -> tuple[int, int]:
    return day.year, day.month


def month_bounds(year: int, month: int, tz: str) -> tuple[datetime, datetime]:
    """[start, end) of a local calendar month in zone `tz`, as UTC instants."""
    start = start_of_day(date(year, month, 1), tz)
    nxt = date(year + (month == 12), month % 12 + 1, 1)
    return start, start_of_day(nxt, tz)


def superbill_date(year: int, month: int, day_of_month: int) -> date:
    """The superbill day in a given month; a day past the month's end means its last day."""
    if not 1 <= day_of_month <= 31:
        raise ValueError(f"superbill_day_of_month {day_of_month!r} is not in 1..31")
    return date(year, month, min(day_of_month, last_day_of_month(year, month)))


def is_superbill_night(night: date, day_of_month: int) -> bool:
    """True when the day after `night` is the account's superbill day."""
    today = night + timedelta(days=1)
    return today == superbill_date(today.year, today.month, day_of_month)


def is_statement_night(night: date) -> bool:
    """Statements are made at 00:00 on the 1st, for the month that just ended."""
    return (night + timedelta(days=1)).day == 1


def nights(first: date, last: date) -> list[date]:
    if last < first:
        raise ValueError(f"--to {last.isoformat()} is before --from {first.isoformat()}")
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def to_utc_iso(instant: datetime) -> str:
    return require_aware(instant).strftime("%Y-%m-%dT%H:%M:%SZ")
