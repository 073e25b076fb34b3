"""The rule under the catch-up sensor: which step of which practice's night is due, from what is
recorded done (domain/schedule.py). The expected instants below were worked out by hand from
each zone's offset on that date, not computed by the code under test."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta

import pytest

from billing_pipeline.domain.schedule import (
    BILLS_STEP_FAILED,
    NO_RUN_FINISHED,
    STEPS,
    CatchUpPolicy,
    PracticeClock,
    State,
    Step,
    StepState,
    Tries,
    practice_states,
    step_instant,
    to_launch,
)

LONG_AGO = datetime(2026, 1, 1, tzinfo=UTC)
POLICY = CatchUpPolicy()


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def states_of(
    practice: PracticeClock,
    now: datetime,
    done: Iterable[tuple[date, Step]] = (),
    tries: dict[tuple[date, Step], Tries] | None = None,
    running: Iterable[tuple[date, Step]] = (),
    policy: CatchUpPolicy = POLICY,
    with_missed: bool = False,
) -> list[StepState]:
    return practice_states(
        practice, done, tries or {}, running, now, policy, with_missed=with_missed
    )


def done_before(tz: str, instant: datetime) -> set[tuple[date, Step]]:
    """Every step of the nights around `instant` whose time is at or before it."""
    out = set()
    for days in range(-12, 2):
        night = instant.date() + timedelta(days=days)
        for step in STEPS:
            if step_instant(night, tz, step) <= instant:
                out.add((night, step))
    return out


def launched_at(
    accounts: list[tuple[str, str]], tick: datetime, step: str, period: timedelta
) -> dict[date, list[str]]:
    """What the rule launches at `tick` for `step` when every step up to `tick - period` is
    done: the practices whose step instant fell in (tick - period, tick]."""
    out: dict[date, list[str]] = {}
    for account_id, tz in accounts:
        practice = PracticeClock(account_id, tz, LONG_AGO)
        states = states_of(practice, tick, done_before(tz, tick - period))
        for (night, s), ids in to_launch(states).items():
            if s == step:
                out.setdefault(night, []).extend(ids)
    return {night: sorted(ids) for night, ids in sorted(out.items())}


QUARTER = timedelta(minutes=15)
CASES = [
    # (accounts, tick, step, period, expected)
    pytest.param(
        [("a", "America/Los_Angeles")],
        "2026-06-16T07:00:00",
        "bills",
        QUARTER,
        {date(2026, 6, 15): ["a"]},
        id="la-midnight-exactly-on-the-tick",
    ),
    pytest.param(
        [("a", "America/Los_Angeles")],
        "2026-06-16T06:59:59",
        "bills",
        QUARTER,
        {},
        id="la-a-second-before-midnight",
    ),
    pytest.param(
        [("a", "America/Los_Angeles")],
        "2026-06-16T07:30:00",
        "autopay",
        QUARTER,
        {date(2026, 6, 15): ["a"]},
        id="autopay-at-0030",
    ),
    pytest.param(
        [("a", "America/Los_Angeles")],
        "2026-06-16T07:30:00",
        "bills",
        QUARTER,
        {},
        id="bills-not-at-0030",
    ),
    pytest.param(
        [("k", "Asia/Kathmandu"), ("i", "Asia/Kolkata")],
        "2026-06-15T18:15:00",
        "bills",
        QUARTER,
        {date(2026, 6, 15): ["k"]},
        id="kathmandu-quarter-hour-offset",
    ),
    pytest.param(
        [("k", "Asia/Kathmandu"), ("i", "Asia/Kolkata")],
        "2026-06-15T18:30:00",
        "bills",
        timedelta(minutes=30),
        {date(2026, 6, 15): ["i", "k"]},
        id="a-longer-gap-catches-both",
    ),
    pytest.param(
        [("kir", "Pacific/Kiritimati"), ("hnl", "Pacific/Honolulu")],
        "2026-06-16T10:00:00",
        "bills",
        QUARTER,
        {date(2026, 6, 15): ["hnl"], date(2026, 6, 16): ["kir"]},
        id="plus14-and-minus10-two-nights",
    ),
    pytest.param(
        [("p", "Pacific/Pago_Pago")],
        "2026-06-16T11:00:00",
        "bills",
        QUARTER,
        {date(2026, 6, 15): ["p"]},
        id="pago-pago-minus11",
    ),
    # London springs forward at 01:00Z on 2026-03-29: the night of 03-28 ends at 00:00 GMT
    # (00:00Z); the night of 03-29 ends at 00:00 BST, 23:00Z the same UTC day.
    pytest.param(
        [("l", "Europe/London")],
        "2026-03-29T00:00:00",
        "bills",
        QUARTER,
        {date(2026, 3, 28): ["l"]},
        id="london-spring-forward-night-before",
    ),
    pytest.param(
        [("l", "Europe/London")],
        "2026-03-29T23:00:00",
        "bills",
        QUARTER,
        {date(2026, 3, 29): ["l"]},
        id="london-spring-forward-night-of",
    ),
    # London falls back at 01:00Z on 2026-10-25: the 25-hour day ends at 00:00Z on 10-26.
    pytest.param(
        [("l", "Europe/London")],
        "2026-10-25T23:00:00",
        "bills",
        QUARTER,
        {},
        id="london-25-hour-day-no-midnight-at-2300",
    ),
    pytest.param(
        [("l", "Europe/London")],
        "2026-10-26T00:00:00",
        "bills",
        QUARTER,
        {date(2026, 10, 25): ["l"]},
        id="london-25-hour-day-ends-at-0000z",
    ),
    # Los Angeles falls back on 2026-11-01: the night of 11-01 ends on standard time.
    pytest.param(
        [("a", "America/Los_Angeles")],
        "2026-11-02T07:00:00",
        "bills",
        QUARTER,
        {},
        id="la-standard-time-not-at-0700",
    ),
    pytest.param(
        [("a", "America/Los_Angeles")],
        "2026-11-02T08:00:00",
        "bills",
        QUARTER,
        {date(2026, 11, 1): ["a"]},
        id="la-standard-time-at-0800",
    ),
    # Santiago springs forward at its midnight (2026-09-06 00:00 -04 becomes 01:00 -03): the
    # day starts at the transition, 04:00Z, and AutoPay comes 30 minutes later.
    pytest.param(
        [("s", "America/Santiago")],
        "2026-09-06T04:00:00",
        "bills",
        QUARTER,
        {date(2026, 9, 5): ["s"]},
        id="santiago-midnight-that-does-not-exist",
    ),
    pytest.param(
        [("s", "America/Santiago")],
        "2026-09-06T04:30:00",
        "autopay",
        QUARTER,
        {date(2026, 9, 5): ["s"]},
        id="santiago-autopay-30-minutes-after",
    ),
    pytest.param(
        [("b", "America/Los_Angeles"), ("a", "America/Los_Angeles")],
        "2026-06-16T07:00:00",
        "bills",
        QUARTER,
        {date(2026, 6, 15): ["a", "b"]},
        id="ids-sorted-in-one-launch",
    ),
]


@pytest.mark.parametrize(("accounts", "tick", "step", "period", "expected"), CASES)
def test_a_step_is_launched_once_its_instant_has_passed(
    accounts: list[tuple[str, str]],
    tick: str,
    step: str,
    period: timedelta,
    expected: dict[date, list[str]],
) -> None:
    assert launched_at(accounts, utc(tick), step, period) == expected


ZONES = {
    "acct-la": "America/Los_Angeles",
    "acct-ny": "America/New_York",
    "acct-kol": "Asia/Kolkata",
    "acct-ktm": "Asia/Kathmandu",
    "acct-kir": "Pacific/Kiritimati",
    "acct-ppg": "Pacific/Pago_Pago",
    "acct-lon": "Europe/London",
    "acct-scl": "America/Santiago",
}


@pytest.mark.parametrize("minutes", [15, 60, 24 * 60])
@pytest.mark.parametrize("start", ["2026-03-18", "2026-10-18", "2026-08-28"])
def test_every_step_runs_exactly_once_in_order_however_often_it_is_evaluated(
    start: str, minutes: int
) -> None:
    """Evaluating every 15 minutes, every hour or once a day through three weeks around DST
    changes, with what is launched recorded done: each practice's nights come exactly once,
    bills before AutoPay, night after night, with none skipped (a daily evaluation catches up
    one step per launch, so it evaluates again at once while something is launched)."""
    practices = [
        PracticeClock(a, tz, utc(f"{start}T00:00:00") - timedelta(days=1))
        for a, tz in ZONES.items()
    ]
    done: dict[str, set[tuple[date, Step]]] = {a: set() for a in ZONES}
    seen: dict[str, list[tuple[date, Step]]] = {a: [] for a in ZONES}
    tick = utc(f"{start}T00:00:00")
    end = tick + timedelta(days=21)
    while tick < end:
        while True:
            states = [s for p in practices for s in states_of(p, tick, done[p.account_id])]
            launch = to_launch(states)
            if not launch:
                break
            for (night, step), ids in launch.items():
                for account_id in ids:
                    seen[account_id].append((night, step))
                    done[account_id].add((night, step))
        tick += timedelta(minutes=minutes)
    for account_id, steps in seen.items():
        assert len(steps) == len(set(steps)), account_id
        assert steps == sorted(steps, key=lambda k: (k[0], STEPS.index(k[1]))), account_id
        nights = sorted({n for n, _ in steps})
        assert all(b - a == timedelta(days=1) for a, b in itertools.pairwise(nights)), nights
        assert {s for _, s in steps} == set(STEPS)
        # 21 days hold 20 to 22 local midnights (the day before the start included).
        assert 20 <= len(nights) <= 23, (account_id, nights)


LA = "America/Los_Angeles"


def test_no_night_before_the_first_client_is_due() -> None:
    # Created at 23:59 PDT on 06-10: the night of 06-10 is the first (its bills at 00:00 on
    # 06-11 come after the client).
    practice = PracticeClock("a", LA, utc("2026-06-11T06:59:00"))
    states = states_of(practice, utc("2026-06-12T09:00:00"), with_missed=True)
    assert [(s.night, s.step, s.state) for s in states][:2] == [
        (date(2026, 6, 10), Step.BILLS, State.DUE),
        (date(2026, 6, 10), Step.AUTOPAY, State.DUE),
    ]
    assert to_launch(states) == {(date(2026, 6, 10), Step.BILLS): ["a"]}
    assert states_of(PracticeClock("b", LA, None), utc("2026-06-12T09:00:00")) == []


def test_nights_past_the_horizon_are_missed_not_launched() -> None:
    """A practice loaded today with years of history: the horizon's oldest night is launched
    first, the older ones are shown missed."""
    practice = PracticeClock("a", LA, utc("2023-02-01T17:00:00"))
    now = utc("2026-06-16T09:00:00")  # 02:00 PDT on 06-16: the last night ended is 06-15
    states = states_of(practice, now, with_missed=True)
    missed = [s for s in states if s.state == State.MISSED]
    assert {s.night for s in missed} == {
        date(2023, 2, 1) + timedelta(days=i)
        for i in range((date(2026, 6, 9) - date(2023, 2, 1)).days)
    }
    assert all(s.overdue for s in missed)
    assert to_launch(states) == {(date(2026, 6, 9), Step.BILLS): ["a"]}
    # Seven nights inside the horizon (06-09 .. 06-15), two steps each, and tonight's.
    inside = [s for s in states if s.state != State.MISSED]
    assert len(inside) == 7 * 2 + 2
    assert states_of(practice, now, policy=CatchUpPolicy(horizon_nights=2))[0].night == date(
        2026, 6, 14
    )


def test_autopay_waits_for_its_bills_and_the_next_night_for_both() -> None:
    practice = PracticeClock("a", LA, LONG_AGO)
    now = utc("2026-06-17T08:00:00")  # after 00:30 PDT on 06-17: nights 06-15, 06-16 ended
    done = done_before(LA, utc("2026-06-15T07:00:00"))  # up to the bills of 06-14
    assert to_launch(states_of(practice, now, done)) == {(date(2026, 6, 14), Step.AUTOPAY): ["a"]}
    done.add((date(2026, 6, 14), Step.AUTOPAY))
    assert to_launch(states_of(practice, now, done)) == {(date(2026, 6, 15), Step.BILLS): ["a"]}


def test_a_running_step_holds_the_practice_back() -> None:
    practice = PracticeClock("a", LA, LONG_AGO)
    now = utc("2026-06-17T08:00:00")
    done = done_before(LA, utc("2026-06-16T07:00:00"))  # up to the bills of 06-15
    running = {(date(2026, 6, 15), Step.AUTOPAY)}
    states = states_of(practice, now, done, running=running)
    assert to_launch(states) == {}
    assert [s.state for s in states if s.night == date(2026, 6, 15)] == [State.DONE, State.RUNNING]


def test_a_failed_step_is_retried_after_its_backoff_then_shown_failed() -> None:
    practice = PracticeClock("a", LA, LONG_AGO)
    night = date(2026, 6, 15)
    done = done_before(LA, utc("2026-06-15T07:30:00"))  # up to the AutoPay of 06-14
    policy = CatchUpPolicy(max_tries=3, backoff=timedelta(minutes=10))
    first = Tries(1, utc("2026-06-16T07:00:00"), "bills: InjectedFault")

    def at(now: str, tries: Tries) -> list[StepState]:
        return states_of(practice, utc(now), done, {(night, Step.BILLS): tries}, policy=policy)

    waiting = at("2026-06-16T07:05:00", first)
    assert to_launch(waiting) == {}
    assert (waiting[-4].state, waiting[-4].error) == (State.RETRY_WAIT, "bills: InjectedFault")
    assert to_launch(at("2026-06-16T07:10:00", first)) == {(night, Step.BILLS): ["a"]}
    # The backoff doubles: 20 minutes after the second try.
    second = Tries(2, utc("2026-06-16T07:10:00"), None)
    assert to_launch(at("2026-06-16T07:29:00", second)) == {}
    assert to_launch(at("2026-06-16T07:30:00", second)) == {(night, Step.BILLS): ["a"]}
    # After the third try the step is failed (a run that died recorded no error), its AutoPay
    # cannot run, and the practice goes on with the next night.
    third = Tries(3, utc("2026-06-16T07:30:00"), None)
    states = at("2026-06-17T08:00:00", third)
    by_key = {(s.night, s.step): s for s in states}
    assert by_key[(night, Step.BILLS)].state == State.FAILED
    assert by_key[(night, Step.BILLS)].error == NO_RUN_FINISHED
    assert by_key[(night, Step.AUTOPAY)].state == State.FAILED
    assert by_key[(night, Step.AUTOPAY)].error == BILLS_STEP_FAILED
    assert by_key[(night, Step.BILLS)].overdue
    assert to_launch(states) == {(date(2026, 6, 16), Step.BILLS): ["a"]}


def test_overdue_means_more_than_an_hour_late() -> None:
    practice = PracticeClock("a", LA, LONG_AGO)
    done = done_before(LA, utc("2026-06-15T07:30:00"))
    bills = step_instant(date(2026, 6, 15), LA, Step.BILLS)
    on_time = states_of(practice, bills + timedelta(hours=1), done)
    late = states_of(practice, bills + timedelta(hours=1, seconds=1), done)
    key = (date(2026, 6, 15), Step.BILLS)
    assert not {(s.night, s.step): s for s in on_time}[key].overdue
    assert {(s.night, s.step): s for s in late}[key].overdue
