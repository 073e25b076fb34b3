"""The practice's clock: each night's instants, month arithmetic and the look-back window.

All times are the account's local time: bills, superbills and statements at 00:00 on D+1,
AutoPay 30 minutes later. Instants come back in UTC.
"""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing_pipeline.domain.calendar import (
    AUTOPAY_OFFSET,
    LOOKBACK_DAYS,
    UnknownTimezone,
    autopay_instant,
    bills_instant,
    in_lookback,
    is_month_end,
    is_statement_night,
    is_superbill_night,
    last_day_of_month,
    local_date,
    lookback_start,
    month_bounds,
    month_key,
    nights,
    previous_month,
    require_aware,
    start_of_day,
    superbill_date,
    to_utc_iso,
    zone,
)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


# Zones with ordinary, midnight, half-hour, 45-minute, date-line and no DST at all.
ZONES = [
    "UTC",
    "America/Los_Angeles",
    "America/New_York",
    "America/Chicago",
    "America/Havana",
    "America/Santiago",
    "America/Asuncion",
    "Asia/Beirut",
    "Asia/Tehran",
    "Europe/London",
    "Asia/Kolkata",
    "Asia/Kathmandu",
    "Australia/Lord_Howe",
    "Pacific/Chatham",
    "Pacific/Kiritimati",
    "Pacific/Pago_Pago",
]

some_nights = st.dates(min_value=date(2000, 1, 1), max_value=date(2037, 12, 30))


# --- The night's instants --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tz", "night", "bills_at", "autopay_at"),
    [
        # Los Angeles, ordinary nights in summer (-07:00) and winter (-08:00).
        ("America/Los_Angeles", date(2026, 7, 14), "2026-07-15T07:00Z", "2026-07-15T07:30Z"),
        ("America/Los_Angeles", date(2026, 1, 14), "2026-01-15T08:00Z", "2026-01-15T08:30Z"),
        # Fall back on 2026-11-01 at 02:00: the night before still runs on daylight time,
        # the night of the change on standard time.
        ("America/Los_Angeles", date(2026, 10, 31), "2026-11-01T07:00Z", "2026-11-01T07:30Z"),
        ("America/Los_Angeles", date(2026, 11, 1), "2026-11-02T08:00Z", "2026-11-02T08:30Z"),
        # Spring forward on 2026-03-08 at 02:00.
        ("America/Los_Angeles", date(2026, 3, 7), "2026-03-08T08:00Z", "2026-03-08T08:30Z"),
        ("America/Los_Angeles", date(2026, 3, 8), "2026-03-09T07:00Z", "2026-03-09T07:30Z"),
        # Half-hour and 45-minute offsets.
        ("Asia/Kolkata", date(2026, 1, 14), "2026-01-14T18:30Z", "2026-01-14T19:00Z"),
        ("Asia/Kathmandu", date(2026, 1, 14), "2026-01-14T18:15Z", "2026-01-14T18:45Z"),
        # Either side of the date line: +14:00 and -11:00.
        ("Pacific/Kiritimati", date(2026, 1, 14), "2026-01-14T10:00Z", "2026-01-14T10:30Z"),
        ("Pacific/Pago_Pago", date(2026, 1, 14), "2026-01-15T11:00Z", "2026-01-15T11:30Z"),
        ("UTC", date(2026, 12, 31), "2027-01-01T00:00Z", "2027-01-01T00:30Z"),
    ],
)
def test_bills_at_local_midnight_and_autopay_thirty_minutes_later(
    tz: str, night: date, bills_at: str, autopay_at: str
) -> None:
    assert bills_instant(night, tz) == utc(bills_at)
    assert autopay_instant(night, tz) == utc(autopay_at)
    assert bills_instant(night, tz).tzinfo == UTC


@pytest.mark.parametrize(
    ("tz", "night", "local_wall"),
    [
        ("America/Los_Angeles", date(2026, 10, 31), "2026-11-01T00:30:00-07:00"),
        ("America/Los_Angeles", date(2026, 11, 1), "2026-11-02T00:30:00-08:00"),
        ("America/Los_Angeles", date(2026, 3, 7), "2026-03-08T00:30:00-08:00"),
        ("America/Los_Angeles", date(2026, 3, 8), "2026-03-09T00:30:00-07:00"),
        ("Asia/Kolkata", date(2026, 6, 1), "2026-06-02T00:30:00+05:30"),
        ("Asia/Kathmandu", date(2026, 6, 1), "2026-06-02T00:30:00+05:45"),
        ("Pacific/Kiritimati", date(2026, 6, 1), "2026-06-02T00:30:00+14:00"),
        ("Pacific/Pago_Pago", date(2026, 6, 1), "2026-06-02T00:30:00-11:00"),
    ],
)
def test_autopay_is_half_past_midnight_on_the_local_clock(
    tz: str, night: date, local_wall: str
) -> None:
    at = autopay_instant(night, tz).astimezone(ZoneInfo(tz))
    assert at.isoformat() == local_wall


def test_the_two_nights_around_fall_back_are_25_hours_apart_in_los_angeles() -> None:
    tz = "America/Los_Angeles"
    assert bills_instant(date(2026, 11, 1), tz) - bills_instant(
        date(2026, 10, 31), tz
    ) == timedelta(hours=25)
    assert bills_instant(date(2026, 3, 8), tz) - bills_instant(date(2026, 3, 7), tz) == timedelta(
        hours=23
    )


def test_the_same_utc_instant_is_two_different_dates_across_the_date_line() -> None:
    instant = utc("2026-01-14T12:00Z")
    assert local_date(instant, "Pacific/Kiritimati") == date(2026, 1, 15)
    assert local_date(instant, "Pacific/Pago_Pago") == date(2026, 1, 14)
    assert local_date(instant, "UTC") == date(2026, 1, 14)


@pytest.mark.parametrize(
    ("instant", "tz", "expected"),
    [
        # 23:30 Pacific on 3 Nov is already 4 Nov in New York and in UTC.
        ("2026-11-03T23:30:00-08:00", "America/Los_Angeles", date(2026, 11, 3)),
        ("2026-11-03T23:30:00-08:00", "America/New_York", date(2026, 11, 4)),
        ("2026-10-31T22:30:00-04:00", "America/New_York", date(2026, 10, 31)),
        ("2026-10-31T22:30:00-04:00", "UTC", date(2026, 11, 1)),
        ("2026-01-14T18:29:59+00:00", "Asia/Kolkata", date(2026, 1, 14)),
        ("2026-01-14T18:30:00+00:00", "Asia/Kolkata", date(2026, 1, 15)),
        ("2026-01-14T18:14:59+00:00", "Asia/Kathmandu", date(2026, 1, 14)),
        ("2026-01-14T18:15:00+00:00", "Asia/Kathmandu", date(2026, 1, 15)),
    ],
)
def test_local_date_is_the_date_on_the_practice_wall_clock(
    instant: str, tz: str, expected: date
) -> None:
    assert local_date(datetime.fromisoformat(instant), tz) == expected


# --- Days that start at a transition ---------------------------------------------------------


@pytest.mark.parametrize(
    ("tz", "day", "starts_at", "first_wall_time"),
    [
        # Cuba springs forward at 00:00 -> 01:00: the day starts at the transition, 01:00 CDT.
        ("America/Havana", date(2026, 3, 8), "2026-03-08T05:00Z", "2026-03-08T01:00:00-04:00"),
        # Chile springs forward at 00:00 -> 01:00 on 6 Sep 2026.
        ("America/Santiago", date(2026, 9, 6), "2026-09-06T04:00Z", "2026-09-06T01:00:00-03:00"),
        # Cuba falls back at 01:00 -> 00:00: midnight happens twice; the day starts at the first.
        ("America/Havana", date(2026, 11, 1), "2026-11-01T04:00Z", "2026-11-01T00:00:00-04:00"),
        # Chile falls back at 24:00 -> 23:00 on the 4th: the 5th starts once, on standard time.
        ("America/Santiago", date(2026, 4, 5), "2026-04-05T04:00Z", "2026-04-05T00:00:00-04:00"),
    ],
)
def test_start_of_day_where_midnight_is_missing_or_doubled(
    tz: str, day: date, starts_at: str, first_wall_time: str
) -> None:
    start = start_of_day(day, tz)
    assert start == utc(starts_at)
    assert start.astimezone(ZoneInfo(tz)).isoformat() == first_wall_time
    assert local_date(start, tz) == day
    assert local_date(start - timedelta(microseconds=1), tz) == day - timedelta(days=1)


def test_midnight_spring_forward_is_the_transition_instant_itself() -> None:
    tz = ZoneInfo("America/Havana")
    start = start_of_day(date(2026, 3, 8), "America/Havana")
    before = start - timedelta(seconds=1)
    assert before.astimezone(tz).utcoffset() == timedelta(hours=-5)
    assert start.astimezone(tz).utcoffset() == timedelta(hours=-4)


@given(tz=st.sampled_from(ZONES), night=some_nights)
def test_bills_instant_is_the_first_instant_of_the_next_local_day(tz: str, night: date) -> None:
    at = bills_instant(night, tz)
    assert local_date(at, tz) == night + timedelta(days=1)
    assert local_date(at - timedelta(microseconds=1), tz) == night
    assert autopay_instant(night, tz) - at == AUTOPAY_OFFSET == timedelta(minutes=30)


@given(tz=st.sampled_from(ZONES), night=some_nights)
def test_consecutive_nights_are_23_to_25_hours_apart(tz: str, night: date) -> None:
    gap = bills_instant(night + timedelta(days=1), tz) - bills_instant(night, tz)
    assert timedelta(hours=22) <= gap <= timedelta(hours=26)
    assert gap > timedelta(0)


# --- Zones and instants ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["Mars/Olympus_Mons", "america/los_angeles", "PST", "", "Los Angeles", "../etc/passwd"],
)
def test_unknown_timezone_is_refused(name: str) -> None:
    with pytest.raises(UnknownTimezone, match="unknown IANA timezone"):
        zone(name)
    with pytest.raises(UnknownTimezone):
        bills_instant(date(2026, 1, 1), name)
    with pytest.raises(UnknownTimezone):
        local_date(utc("2026-01-01T00:00Z"), name)


def test_unknown_timezone_is_a_value_error() -> None:
    assert issubclass(UnknownTimezone, ValueError)


@pytest.mark.parametrize("name", ["America/Los_Angeles", "Asia/Kathmandu", "UTC"])
def test_known_timezone_is_a_zoneinfo(name: str) -> None:
    assert zone(name) == ZoneInfo(name)


def test_naive_instant_is_refused() -> None:
    with pytest.raises(ValueError, match="has no UTC offset"):
        require_aware(datetime(2026, 1, 1, 12, 0))
    with pytest.raises(ValueError, match="created_at"):
        require_aware(datetime(2026, 1, 1, 12, 0), "created_at")
    with pytest.raises(ValueError):
        local_date(datetime(2026, 1, 1, 12, 0), "UTC")


def test_require_aware_converts_to_utc() -> None:
    instant = datetime(2026, 1, 1, 12, 0, tzinfo=timezone(timedelta(hours=5, minutes=45)))
    assert require_aware(instant) == instant
    assert require_aware(instant).tzinfo == UTC
    assert require_aware(instant).hour == 6
    assert require_aware(instant).minute == 15


def test_to_utc_iso() -> None:
    instant = datetime(2026, 11, 1, 0, 30, tzinfo=ZoneInfo("America/Los_Angeles"))
    assert to_utc_iso(instant) == "2026-11-01T07:30:00Z"
    with pytest.raises(ValueError):
        to_utc_iso(datetime(2026, 11, 1))


# --- Months ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("year", "month", "day_of_month", "expected"),
    [
        # Non-leap February 2026: 29, 30 and 31 all mean the 28th.
        (2026, 2, 28, date(2026, 2, 28)),
        (2026, 2, 29, date(2026, 2, 28)),
        (2026, 2, 30, date(2026, 2, 28)),
        (2026, 2, 31, date(2026, 2, 28)),
        # Leap February 2028: 29 exists; 30 and 31 mean the 29th.
        (2028, 2, 28, date(2028, 2, 28)),
        (2028, 2, 29, date(2028, 2, 29)),
        (2028, 2, 30, date(2028, 2, 29)),
        (2028, 2, 31, date(2028, 2, 29)),
        # April has 30 days.
        (2026, 4, 29, date(2026, 4, 29)),
        (2026, 4, 30, date(2026, 4, 30)),
        (2026, 4, 31, date(2026, 4, 30)),
        # Months with 31 days keep the day.
        (2026, 1, 31, date(2026, 1, 31)),
        (2026, 12, 31, date(2026, 12, 31)),
        (2026, 7, 1, date(2026, 7, 1)),
    ],
)
def test_superbill_day_past_the_month_end_is_the_last_day(
    year: int, month: int, day_of_month: int, expected: date
) -> None:
    assert superbill_date(year, month, day_of_month) == expected


@pytest.mark.parametrize("day_of_month", [0, -1, 32, 100])
def test_superbill_day_outside_1_to_31_is_refused(day_of_month: int) -> None:
    with pytest.raises(ValueError, match=f"superbill_day_of_month {day_of_month}"):
        superbill_date(2026, 1, day_of_month)


@pytest.mark.parametrize(
    ("night", "day_of_month", "expected"),
    [
        (date(2026, 11, 4), 5, True),  # D+1 = 5 Nov
        (date(2026, 11, 5), 5, False),
        (date(2026, 10, 31), 1, True),  # D+1 = 1 Nov
        (date(2026, 4, 29), 31, True),  # D+1 = 30 Apr, the last day of April
        (date(2026, 4, 30), 31, False),  # D+1 = 1 May
        (date(2026, 5, 30), 31, True),  # D+1 = 31 May
        (date(2026, 2, 27), 30, True),  # D+1 = 28 Feb 2026
        (date(2026, 2, 28), 30, False),  # D+1 = 1 Mar
        (date(2028, 2, 27), 30, False),  # D+1 = 28 Feb 2028 (leap: the day is the 29th)
        (date(2028, 2, 28), 30, True),  # D+1 = 29 Feb 2028
        (date(2026, 11, 29), 31, True),  # D+1 = 30 Nov
    ],
)
def test_is_superbill_night(night: date, day_of_month: int, expected: bool) -> None:
    assert is_superbill_night(night, day_of_month) is expected


@given(
    year=st.integers(2000, 2100),
    month=st.integers(1, 12),
    day_of_month=st.integers(1, 31),
)
def test_exactly_one_superbill_night_a_month(year: int, month: int, day_of_month: int) -> None:
    first = date(year, month, 1)
    days = [first + timedelta(days=i) for i in range(last_day_of_month(year, month))]
    superbill_days = [d for d in days if is_superbill_night(d - timedelta(days=1), day_of_month)]
    assert superbill_days == [superbill_date(year, month, day_of_month)]
    assert superbill_days[0].day == min(day_of_month, last_day_of_month(year, month))


@pytest.mark.parametrize(
    ("night", "expected"),
    [
        (date(2026, 1, 31), True),
        (date(2026, 2, 28), True),
        (date(2028, 2, 28), False),
        (date(2028, 2, 29), True),
        (date(2026, 4, 30), True),
        (date(2026, 4, 29), False),
        (date(2026, 12, 31), True),
        (date(2027, 1, 1), False),
        (date(2026, 11, 15), False),
    ],
)
def test_statement_night_is_the_last_day_of_a_month(night: date, expected: bool) -> None:
    assert is_statement_night(night) is expected
    assert is_month_end(night) is expected


@given(night=some_nights)
def test_statement_night_iff_next_day_is_the_first(night: date) -> None:
    assert is_statement_night(night) is ((night + timedelta(days=1)).day == 1)
    assert is_month_end(night) is is_statement_night(night)


@pytest.mark.parametrize(
    ("year", "month", "days"),
    [(2026, 2, 28), (2028, 2, 29), (2100, 2, 28), (2000, 2, 29), (2026, 4, 30), (2026, 12, 31)],
)
def test_last_day_of_month(year: int, month: int, days: int) -> None:
    assert last_day_of_month(year, month) == days


@pytest.mark.parametrize(
    ("day", "expected"),
    [
        (date(2026, 11, 1), (2026, 10)),
        (date(2026, 11, 30), (2026, 10)),
        (date(2027, 1, 1), (2026, 12)),
        (date(2028, 3, 1), (2028, 2)),
    ],
)
def test_previous_month(day: date, expected: tuple[int, int]) -> None:
    assert previous_month(day) == expected


@pytest.mark.parametrize(
    ("year", "month", "key"), [(2026, 1, "2026-01"), (2026, 12, "2026-12"), (999, 3, "0999-03")]
)
def test_month_key(year: int, month: int, key: str) -> None:
    assert month_key(year, month) == key


@pytest.mark.parametrize(
    ("year", "month", "tz", "start", "end"),
    [
        # November in Los Angeles: starts on daylight time, ends on standard time.
        (2026, 11, "America/Los_Angeles", "2026-11-01T07:00Z", "2026-12-01T08:00Z"),
        # March: starts on standard, ends on daylight time.
        (2026, 3, "America/Los_Angeles", "2026-03-01T08:00Z", "2026-04-01T07:00Z"),
        # December rolls the year over.
        (2026, 12, "America/Los_Angeles", "2026-12-01T08:00Z", "2027-01-01T08:00Z"),
        (2026, 12, "UTC", "2026-12-01T00:00Z", "2027-01-01T00:00Z"),
        (2028, 2, "Asia/Kolkata", "2028-01-31T18:30Z", "2028-02-29T18:30Z"),
        (2026, 6, "Pacific/Kiritimati", "2026-05-31T10:00Z", "2026-06-30T10:00Z"),
        (2026, 6, "Pacific/Pago_Pago", "2026-06-01T11:00Z", "2026-07-01T11:00Z"),
    ],
)
def test_month_bounds(year: int, month: int, tz: str, start: str, end: str) -> None:
    assert month_bounds(year, month, tz) == (utc(start), utc(end))


@given(tz=st.sampled_from(ZONES), year=st.integers(2000, 2037), month=st.integers(1, 12))
def test_month_bounds_hold_exactly_the_local_month(tz: str, year: int, month: int) -> None:
    start, end = month_bounds(year, month, tz)
    assert local_date(start, tz) == date(year, month, 1)
    assert local_date(end - timedelta(microseconds=1), tz) == date(
        year, month, last_day_of_month(year, month)
    )
    assert local_date(end, tz).day == 1
    assert local_date(start - timedelta(microseconds=1), tz).month != month


# --- Look-back -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("session_date", "night", "inside"),
    [
        (date(2026, 6, 30), date(2026, 6, 30), True),  # the night itself
        (date(2026, 4, 1), date(2026, 6, 30), True),  # exactly 90 days before
        (date(2026, 3, 31), date(2026, 6, 30), False),  # 91 days before
        (date(2026, 7, 1), date(2026, 6, 30), False),  # after the night
        (date(2026, 1, 1), date(2026, 3, 31), True),  # 89 days: Feb 2026 has 28 days
        (date(2025, 12, 31), date(2026, 3, 31), True),  # 90
        (date(2025, 12, 30), date(2026, 3, 31), False),  # 91
    ],
)
def test_lookback_is_90_days_inclusive(session_date: date, night: date, inside: bool) -> None:
    assert in_lookback(session_date, night) is inside


@given(night=some_nights, days_before=st.integers(-5, 200))
def test_lookback_property(night: date, days_before: int) -> None:
    session_date = night - timedelta(days=days_before)
    assert in_lookback(session_date, night) is (0 <= days_before <= LOOKBACK_DAYS)
    assert lookback_start(night) == night - timedelta(days=90)


# --- Nights -------------------------------------------------------------------------------------


def test_nights_are_every_date_in_order_inclusive() -> None:
    assert nights(date(2026, 10, 30), date(2026, 11, 2)) == [
        date(2026, 10, 30),
        date(2026, 10, 31),
        date(2026, 11, 1),
        date(2026, 11, 2),
    ]


def test_a_single_night() -> None:
    assert nights(date(2026, 2, 28), date(2026, 2, 28)) == [date(2026, 2, 28)]


def test_nights_across_a_leap_day() -> None:
    assert nights(date(2028, 2, 28), date(2028, 3, 1)) == [
        date(2028, 2, 28),
        date(2028, 2, 29),
        date(2028, 3, 1),
    ]


def test_reversed_range_is_refused() -> None:
    with pytest.raises(ValueError, match=r"--to 2026-11-01 is before --from 2026-11-02"):
        nights(date(2026, 11, 2), date(2026, 11, 1))


@given(first=some_nights, length=st.integers(0, 400))
def test_nights_property(first: date, length: int) -> None:
    last = first + timedelta(days=length)
    got = nights(first, last)
    assert len(got) == length + 1
    assert got[0] == first
    assert got[-1] == last
    assert all(b - a == timedelta(days=1) for a, b in itertools.pairwise(got))
