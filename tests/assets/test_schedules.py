"""The two nightly schedules across timezones, through Dagster's own schedule test contexts.

Both schedules tick every 15 minutes in UTC and launch, for each night, the practices whose
00:00 (bills) or 00:30 (AutoPay) passed since the previous tick. The expected instants below
were worked out by hand from each zone's offset on that date, not computed by the code under
test.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta

import dagster as dg
import pytest
from sqlalchemy import Engine

from billing_pipeline.db.engine import dispose_engines, get_engine, upgrade
from billing_pipeline.db.store import NewAccount, create_account
from billing_pipeline.domain.schedule import due_nights
from billing_pipeline.domain.settings import BillCreation, Sharing
from billing_pipeline.partitions import ACCOUNTS_TAG, service_dates
from billing_pipeline.resources.database import BillingDatabase
from billing_pipeline.schedules import TICK_CRON, autopay_schedule, nightly_billing_schedule
from tests.conftest import create_pg_database, drop_pg_database

ZONES = {
    "acct-la": "America/Los_Angeles",
    "acct-la2": "America/Los_Angeles",
    "acct-ny": "America/New_York",
    "acct-kol": "Asia/Kolkata",
    "acct-ktm": "Asia/Kathmandu",
    "acct-kir": "Pacific/Kiritimati",
    "acct-hnl": "Pacific/Honolulu",
    "acct-ppg": "Pacific/Pago_Pago",
    "acct-lon": "Europe/London",
    "acct-scl": "America/Santiago",
}

SHARING = Sharing(
    share_bills=True,
    bill_delay_minutes=60,
    share_superbills=True,
    superbill_delay_minutes=0,
    share_statements=False,
    statement_delay_minutes=0,
)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def create_accounts(engine: Engine) -> None:
    with engine.begin() as conn:
        for account_id, tz in ZONES.items():
            create_account(
                conn,
                NewAccount(
                    id=account_id,
                    name=f"Practice {account_id}",
                    timezone=tz,
                    bill_creation=BillCreation.DAILY,
                    superbill_day_of_month=1,
                    autopay_enabled=True,
                    defaults=SHARING,
                ),
            )


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def zones_db(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BillingDatabase]:
    """A migrated billing database with one practice in each zone (two in Los Angeles)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('zones') / 'billing.db'}"
    else:
        url = create_pg_database()
    engine = get_engine(url)
    upgrade(engine)
    create_accounts(engine)
    yield BillingDatabase(url=url)
    if request.param == "postgres":
        drop_pg_database(url)
    else:
        dispose_engines()


def evaluate(
    schedule: dg.ScheduleDefinition, db: BillingDatabase, tick: datetime
) -> list[dg.RunRequest] | dg.SkipReason:
    with dg.build_schedule_context(scheduled_execution_time=tick, resources={"db": db}) as ctx:
        result = schedule(ctx)
    return result  # type: ignore[return-value]  # a schedule's result is typed as any of its forms; ours returns RunRequests or a SkipReason


def requested(result: list[dg.RunRequest] | dg.SkipReason) -> dict[str, list[str]]:
    """{partition key: sorted account ids} of a schedule's answer; fails on a SkipReason."""
    assert isinstance(result, list), f"expected RunRequests, got {result!r}"
    out: dict[str, list[str]] = {}
    for request in result:
        assert isinstance(request, dg.RunRequest)
        assert request.partition_key not in out, "two requests for the same night in one tick"
        ids = request.tags[ACCOUNTS_TAG].split(",")
        assert ids == sorted(ids), f"account tag not sorted: {ids}"
        out[request.partition_key] = ids  # type: ignore[index]  # partition_key is optional; each of our requests names its night
    return out


# (tick in UTC, {night: accounts}) for the bills step; {} means the schedule must skip.
BILLS_TICKS = [
    # Summer 2026. Kathmandu +05:45: 00:00 on 06-16 is 18:15Z on 06-15.
    ("2026-06-15T18:00:00", {}),
    ("2026-06-15T18:15:00", {"2026-06-15": ["acct-ktm"]}),
    # Kolkata +05:30: 18:30Z; Kathmandu's moment has passed and is not repeated.
    ("2026-06-15T18:30:00", {"2026-06-15": ["acct-kol"]}),
    # London BST +01: 23:00Z.
    ("2026-06-15T23:00:00", {"2026-06-15": ["acct-lon"]}),
    # New York EDT -04: 04:00Z on 06-16.
    # Santiago (southern winter, -04) reaches 00:00 at the same instant.
    ("2026-06-16T04:00:00", {"2026-06-15": ["acct-ny", "acct-scl"]}),
    # Both Los Angeles practices, PDT -07: 07:00Z, in one request.
    ("2026-06-16T07:00:00", {"2026-06-15": ["acct-la", "acct-la2"]}),
    # Kiritimati +14 starts 06-17 at the instant Honolulu -10 starts 06-16: two nights at once.
    ("2026-06-16T10:00:00", {"2026-06-15": ["acct-hnl"], "2026-06-16": ["acct-kir"]}),
    # Pago Pago -11: 11:00Z, a day and an hour after Kiritimati's same local date.
    ("2026-06-16T11:00:00", {"2026-06-15": ["acct-ppg"]}),
    # Nobody's midnight is at 12:15Z (no zone is at -12:15).
    ("2026-06-16T12:15:00", {}),
    # A tick a minute off the quarter (a late tick) still finds the midnight in its period.
    ("2026-06-16T07:01:00", {"2026-06-15": ["acct-la", "acct-la2"]}),
]

AUTOPAY_TICKS = [
    ("2026-06-15T18:15:00", {}),
    # Kathmandu 00:30 is 18:45Z, Kolkata's 19:00Z.
    ("2026-06-15T18:45:00", {"2026-06-15": ["acct-ktm"]}),
    ("2026-06-15T19:00:00", {"2026-06-15": ["acct-kol"]}),
    ("2026-06-15T23:30:00", {"2026-06-15": ["acct-lon"]}),
    ("2026-06-16T07:00:00", {}),
    ("2026-06-16T07:30:00", {"2026-06-15": ["acct-la", "acct-la2"]}),
    ("2026-06-16T10:30:00", {"2026-06-15": ["acct-hnl"], "2026-06-16": ["acct-kir"]}),
    ("2026-06-16T11:30:00", {"2026-06-15": ["acct-ppg"]}),
    ("2026-06-16T12:15:00", {}),
]


@pytest.mark.slow
@pytest.mark.parametrize(("tick", "expected"), BILLS_TICKS)
def test_nightly_billing_schedule_launches_the_practices_whose_midnight_passed(
    zones_db: BillingDatabase, tick: str, expected: dict[str, list[str]]
) -> None:
    result = evaluate(nightly_billing_schedule, zones_db, utc(tick))
    if not expected:
        assert isinstance(result, dg.SkipReason), f"{tick}: expected a skip, got {result!r}"
        assert "bills" in (result.skip_message or "")
        return
    assert requested(result) == expected


@pytest.mark.slow
@pytest.mark.parametrize(("tick", "expected"), AUTOPAY_TICKS)
def test_autopay_schedule_launches_the_practices_whose_0030_passed(
    zones_db: BillingDatabase, tick: str, expected: dict[str, list[str]]
) -> None:
    result = evaluate(autopay_schedule, zones_db, utc(tick))
    if not expected:
        assert isinstance(result, dg.SkipReason), f"{tick}: expected a skip, got {result!r}"
        assert "autopay" in (result.skip_message or "")
        return
    assert requested(result) == expected


@pytest.mark.parametrize(
    ("schedule", "tick", "expected"),
    [
        # London springs forward at 01:00Z on 2026-03-29: the night of 03-28 ends at 00:00 GMT
        # (00:00Z); the night of 03-29 ends at 00:00 BST, 23:00Z the same UTC day.
        (nightly_billing_schedule, "2026-03-29T00:00:00", {"2026-03-28": ["acct-lon"]}),
        (autopay_schedule, "2026-03-29T00:30:00", {"2026-03-28": ["acct-lon"]}),
        (nightly_billing_schedule, "2026-03-29T23:00:00", {"2026-03-29": ["acct-lon"]}),
        # London falls back at 01:00Z on 2026-10-25: 23:00Z on 10-24 ends the night of 10-24;
        # the 25-hour day 10-25 ends at 00:00Z on 10-26, and nothing happens at 23:00Z on 10-25.
        (nightly_billing_schedule, "2026-10-24T23:00:00", {"2026-10-24": ["acct-lon"]}),
        (nightly_billing_schedule, "2026-10-25T23:00:00", {}),
        (nightly_billing_schedule, "2026-10-26T00:00:00", {"2026-10-25": ["acct-lon"]}),
        (autopay_schedule, "2026-10-26T00:30:00", {"2026-10-25": ["acct-lon"]}),
        # Los Angeles and New York fall back on 2026-11-01 (after midnight): the night of 10-31
        # still ends on daylight time, the night of 11-01 on standard time, an hour later in UTC.
        (nightly_billing_schedule, "2026-11-01T07:00:00", {"2026-10-31": ["acct-la", "acct-la2"]}),
        (nightly_billing_schedule, "2026-11-02T07:00:00", {}),
        (nightly_billing_schedule, "2026-11-02T08:00:00", {"2026-11-01": ["acct-la", "acct-la2"]}),
        (nightly_billing_schedule, "2026-11-02T05:00:00", {"2026-11-01": ["acct-ny"]}),
        # Santiago springs forward at its midnight (2026-09-06 00:00 -04 becomes 01:00 -03):
        # the day starts at the transition, 04:00Z, and AutoPay comes 30 minutes later.
        (nightly_billing_schedule, "2026-09-06T04:00:00", {"2026-09-05": ["acct-ny", "acct-scl"]}),
        (autopay_schedule, "2026-09-06T04:30:00", {"2026-09-05": ["acct-ny", "acct-scl"]}),
        # The next night Santiago is on -03: 03:00Z.
        (nightly_billing_schedule, "2026-09-07T03:00:00", {"2026-09-06": ["acct-scl"]}),
    ],
)
@pytest.mark.slow
def test_daylight_saving_nights(
    zones_db: BillingDatabase,
    schedule: dg.ScheduleDefinition,
    tick: str,
    expected: dict[str, list[str]],
) -> None:
    result = evaluate(schedule, zones_db, utc(tick))
    if not expected:
        assert isinstance(result, dg.SkipReason), f"{tick}: expected a skip, got {result!r}"
        return
    assert requested(result) == expected


@pytest.mark.slow
@pytest.mark.parametrize("step", ["bills", "autopay"])
@pytest.mark.parametrize("start", ["2026-03-18", "2026-10-18", "2026-08-28"])
def test_every_night_is_due_exactly_once_per_practice(step: str, start: str) -> None:
    """Walking every 15-minute tick through three weeks around DST changes (London and the
    US in March and October/November, Santiago in September), each practice's nights come
    due exactly once each, in order, with none skipped."""
    accounts = list(ZONES.items())
    seen: dict[str, list[date]] = {a: [] for a in ZONES}
    tick = utc(f"{start}T00:00:00")
    end = tick + timedelta(days=21)
    while tick < end:
        for night, ids in due_nights(accounts, tick, step).items():
            for account_id in ids:
                seen[account_id].append(night)
        tick += timedelta(minutes=15)
    for account_id, nights in seen.items():
        assert len(nights) == len(set(nights)), (account_id, nights)
        assert all(b - a == timedelta(days=1) for a, b in itertools.pairwise(nights)), (
            account_id,
            nights,
        )
        # 21 days of ticks hold 21 local midnights, give or take the DST hour.
        assert 20 <= len(nights) <= 22, (account_id, nights)


def test_run_requests_are_distinct_and_resolve_against_the_partitions(
    zones_db: BillingDatabase,
) -> None:
    """Run keys differ between the schedules and between nights; each request's partition is
    a partition of the job at the tick (Kiritimati's night is today's UTC date, which exists
    only thanks to end_offset=1), as the scheduler daemon resolves it."""
    from billing_pipeline.definitions import defs

    tick = utc("2026-06-16T10:00:00")
    keys: list[str] = []
    for schedule, at in (
        (nightly_billing_schedule, tick),
        (autopay_schedule, tick + timedelta(minutes=30)),
    ):
        with dg.build_schedule_context(
            scheduled_execution_time=at,
            resources={"db": zones_db},
            repository_def=defs.get_repository_def(),
        ) as ctx:
            data = schedule.evaluate_tick(ctx)
        assert data.skip_message is None
        assert {r.partition_key for r in data.run_requests} == {"2026-06-15", "2026-06-16"}
        for request in data.run_requests:
            assert request.tags["dagster/partition"] == request.partition_key
            assert request.tags["dagster/schedule_name"] == schedule.name
            keys.append(request.run_key)  # type: ignore[arg-type]  # run_key is optional; our schedules set one on each request
        assert schedule.job_name == (
            "nightly_billing_job" if schedule is nightly_billing_schedule else "autopay_job"
        )
    assert len(keys) == len(set(keys)) == 4
    assert service_dates.get_partition_keys(current_time=tick)[-1] == "2026-06-16"


def test_schedule_cron_and_timezone() -> None:
    for schedule in (nightly_billing_schedule, autopay_schedule):
        assert schedule.cron_schedule == "*/15 * * * *" == TICK_CRON
        assert schedule.execution_timezone == "UTC"
        assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
        assert set(schedule.required_resource_keys) == {"db"}


def test_a_database_without_practices_skips(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    upgrade(get_engine(url))
    try:
        result = evaluate(
            nightly_billing_schedule, BillingDatabase(url=url), utc("2026-06-16T07:00:00")
        )
        assert isinstance(result, dg.SkipReason)
    finally:
        dispose_engines()


# --- due_nights, the pure rule under the schedules -------------------------------------------

DUE_NIGHTS_CASES = [
    # (accounts, tick, step, period, expected)
    pytest.param(
        [("a", "America/Los_Angeles")],
        "2026-06-16T07:00:00",
        "bills",
        None,
        {date(2026, 6, 15): ["a"]},
        id="la-midnight-exactly-on-the-tick",
    ),
    pytest.param(
        [("a", "America/Los_Angeles")],
        "2026-06-16T06:59:59",
        "bills",
        None,
        {},
        id="la-a-second-before-midnight",
    ),
    pytest.param(
        [("a", "America/Los_Angeles")],
        "2026-06-16T07:15:00",
        "bills",
        None,
        {},
        id="period-is-open-at-its-start",
    ),
    pytest.param(
        [("a", "America/Los_Angeles")],
        "2026-06-16T07:14:59",
        "bills",
        None,
        {date(2026, 6, 15): ["a"]},
        id="period-just-before-its-start-excluded-end",
    ),
    pytest.param(
        [("a", "America/Los_Angeles")],
        "2026-06-16T07:30:00",
        "autopay",
        None,
        {date(2026, 6, 15): ["a"]},
        id="autopay-at-0030",
    ),
    pytest.param(
        [("a", "America/Los_Angeles")],
        "2026-06-16T07:30:00",
        "bills",
        None,
        {},
        id="bills-not-at-0030",
    ),
    pytest.param(
        [("k", "Asia/Kathmandu"), ("i", "Asia/Kolkata")],
        "2026-06-15T18:15:00",
        "bills",
        None,
        {date(2026, 6, 15): ["k"]},
        id="kathmandu-quarter-hour-offset",
    ),
    pytest.param(
        [("k", "Asia/Kathmandu"), ("i", "Asia/Kolkata")],
        "2026-06-15T18:30:00",
        "bills",
        timedelta(minutes=30),
        {date(2026, 6, 15): ["i", "k"]},
        id="longer-period-catches-both",
    ),
    pytest.param(
        [("kir", "Pacific/Kiritimati"), ("hnl", "Pacific/Honolulu")],
        "2026-06-16T10:00:00",
        "bills",
        None,
        {date(2026, 6, 15): ["hnl"], date(2026, 6, 16): ["kir"]},
        id="plus14-and-minus10-two-nights",
    ),
    pytest.param(
        [("p", "Pacific/Pago_Pago")],
        "2026-06-16T11:00:00",
        "bills",
        None,
        {date(2026, 6, 15): ["p"]},
        id="pago-pago-minus11",
    ),
    pytest.param(
        [("l", "Europe/London")],
        "2026-03-29T00:00:00",
        "bills",
        None,
        {date(2026, 3, 28): ["l"]},
        id="london-spring-forward-night-before",
    ),
    pytest.param(
        [("l", "Europe/London")],
        "2026-03-29T23:00:00",
        "bills",
        None,
        {date(2026, 3, 29): ["l"]},
        id="london-spring-forward-night-of",
    ),
    pytest.param(
        [("l", "Europe/London")],
        "2026-10-25T23:00:00",
        "bills",
        None,
        {},
        id="london-25-hour-day-no-midnight-at-2300",
    ),
    pytest.param(
        [("l", "Europe/London")],
        "2026-10-26T00:00:00",
        "bills",
        None,
        {date(2026, 10, 25): ["l"]},
        id="london-25-hour-day-ends-at-0000z",
    ),
    pytest.param(
        [("s", "America/Santiago")],
        "2026-09-06T04:00:00",
        "bills",
        None,
        {date(2026, 9, 5): ["s"]},
        id="santiago-midnight-that-does-not-exist",
    ),
    pytest.param(
        [("s", "America/Santiago")],
        "2026-09-06T04:30:00",
        "autopay",
        None,
        {date(2026, 9, 5): ["s"]},
        id="santiago-autopay-30-minutes-after",
    ),
    pytest.param(
        [("b", "America/Los_Angeles"), ("a", "America/Los_Angeles")],
        "2026-06-16T07:00:00",
        "bills",
        None,
        {date(2026, 6, 15): ["a", "b"]},
        id="ids-sorted",
    ),
    pytest.param(
        [("a", "America/Los_Angeles")],
        "2026-06-17T07:00:00",
        "bills",
        timedelta(days=2),
        {date(2026, 6, 15): ["a"], date(2026, 6, 16): ["a"]},
        id="catch-up-period-two-nights-in-order",
    ),
    pytest.param([], "2026-06-16T07:00:00", "bills", None, {}, id="no-accounts"),
]


@pytest.mark.parametrize(("accounts", "tick", "step", "period", "expected"), DUE_NIGHTS_CASES)
def test_due_nights(
    accounts: list[tuple[str, str]],
    tick: str,
    step: str,
    period: timedelta | None,
    expected: dict[date, list[str]],
) -> None:
    kwargs = {"period": period} if period is not None else {}
    got = due_nights(accounts, utc(tick), step, **kwargs)
    assert got == expected
    assert list(got) == sorted(got)


def test_due_nights_takes_any_aware_tick() -> None:
    """The same instant written in another offset gives the same answer."""
    accounts = [("a", "America/Los_Angeles")]
    in_utc = due_nights(accounts, utc("2026-06-16T07:00:00"), "bills")
    in_ny = due_nights(accounts, datetime.fromisoformat("2026-06-16T03:00:00-04:00"), "bills")
    assert in_utc == in_ny == {date(2026, 6, 15): ["a"]}
