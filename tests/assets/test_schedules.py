"""The catch-up sensor `launch_due_nights` across timezones, through Dagster's own sensor test
contexts, on a real billing database (SQLite and PostgreSQL).

The sensor launches, for each practice, the first step of its nights that is due and not
recorded done. With every step recorded done up to the previous quarter hour, what it launches
at an instant is what an edge-triggered 15-minute tick would have launched; the tables below
keep the instants worked out by hand for the former schedules (the pure rule is tested for many
more cases in tests/unit/test_catch_up_rules.py). tests/integration/test_catch_up.py runs the
nights it launches.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest
from sqlalchemy import Engine

from billing_pipeline.db import models as m
from billing_pipeline.db.engine import dispose_engines, get_engine, upgrade
from billing_pipeline.db.store import NewAccount, NewClient, create_account, create_client
from billing_pipeline.domain.schedule import STEP_RECORDS, STEPS, step_instant
from billing_pipeline.domain.settings import BillCreation, Sharing
from billing_pipeline.partitions import ACCOUNTS_TAG, DATABASE_TAG, service_dates
from billing_pipeline.resources.clock import Clock
from billing_pipeline.resources.database import BillingDatabase
from billing_pipeline.schedules import launch_due_nights, night_ledger_schedule
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


CLIENTS_CREATED = datetime(2026, 1, 1, tzinfo=UTC)


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
            create_client(
                conn,
                NewClient(
                    id=f"cl-{account_id}",
                    account_id=account_id,
                    name="Test Client",
                    created_at=CLIENTS_CREATED,
                    own_settings={},
                ),
            )


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def zones_db(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BillingDatabase]:
    """A migrated billing database with one practice in each zone (two in Los Angeles), each
    with a client created on 2026-01-01."""
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


def record_done_until(db: BillingDatabase, instant: datetime) -> None:
    """Start afresh: every step of the nights around `instant` whose time is at or before it
    is recorded done (each of its records), and nothing was tried."""
    with db.engine.begin() as conn:
        conn.execute(m.NightStep.__table__.delete())
        conn.execute(m.NightStepTry.__table__.delete())
        rows = []
        for account_id, tz in ZONES.items():
            for days in range(-12, 2):
                night = instant.date() + timedelta(days=days)
                for step in STEPS:
                    if step_instant(night, tz, step) <= instant:
                        rows += [
                            {
                                "account_id": account_id,
                                "night": night,
                                "step": record,
                                "completed_at": instant,
                            }
                            for record in STEP_RECORDS[step]
                        ]
        conn.execute(m.NightStep.__table__.insert(), rows)


def evaluate(db: BillingDatabase, at: datetime) -> dg.SensorResult:
    """The sensor at the logical instant `at`, on an instance with no run in flight."""
    clock = Clock(mode="logical", at=at.isoformat())
    with (
        dg.DagsterInstance.ephemeral() as instance,
        dg.build_sensor_context(instance=instance, resources={"db": db, "clock": clock}) as ctx,
    ):
        result = launch_due_nights(ctx)
    assert isinstance(result, dg.SensorResult)
    return result


def requested(result: dg.SensorResult, step: str) -> dict[str, list[str]]:
    """{partition key: sorted account ids} of the sensor's requests for `step`."""
    out: dict[str, list[str]] = {}
    for request in result.run_requests or []:
        if request.tags["billing/step"] != step:
            continue
        assert request.partition_key not in out, "two requests for the same night and step"
        ids = request.tags[ACCOUNTS_TAG].split(",")
        assert ids == sorted(ids), f"account tag not sorted: {ids}"
        out[request.partition_key] = ids  # type: ignore[index]  # partition_key is optional; each of our requests names its night
    return out


def launched(db: BillingDatabase, tick: str, step: str) -> dict[str, list[str]]:
    at = utc(tick)
    record_done_until(db, at - timedelta(minutes=15))
    return requested(evaluate(db, at), step)


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
def test_the_sensor_launches_the_practices_whose_midnight_passed(
    zones_db: BillingDatabase, tick: str, expected: dict[str, list[str]]
) -> None:
    assert launched(zones_db, tick, "bills") == expected


@pytest.mark.slow
@pytest.mark.parametrize(("tick", "expected"), AUTOPAY_TICKS)
def test_the_sensor_launches_the_practices_whose_0030_passed(
    zones_db: BillingDatabase, tick: str, expected: dict[str, list[str]]
) -> None:
    assert launched(zones_db, tick, "autopay") == expected


def test_run_requests_name_their_job_night_and_practices_and_resolve(
    zones_db: BillingDatabase,
) -> None:
    """Each request runs the step's job for a partition that exists at the tick (Kiritimati's
    night is today's UTC date, which exists only thanks to end_offset=1), tagged with the
    step, the practices and the database, as the sensor daemon resolves it; the try is
    recorded, so the same instant does not launch it again (it waits for its backoff)."""
    from billing_pipeline.definitions import defs

    tick = utc("2026-06-16T10:00:00")
    record_done_until(zones_db, tick - timedelta(minutes=15))
    clock = Clock(mode="logical", at=tick.isoformat())
    with dg.build_sensor_context(
        resources={"db": zones_db, "clock": clock},
        repository_def=defs.get_repository_def(),
        instance=dg.DagsterInstance.ephemeral(),
    ) as ctx:
        data = launch_due_nights.evaluate_tick(ctx)
    assert data.skip_message is None
    assert {(r.partition_key, r.job_name) for r in data.run_requests} == {
        ("2026-06-15", "nightly_billing_job"),
        ("2026-06-16", "nightly_billing_job"),
    }
    keys = {r.run_key for r in data.run_requests}
    assert len(keys) == 2
    for request in data.run_requests:
        assert request.tags["dagster/partition"] == request.partition_key
        assert request.tags[DATABASE_TAG] == zones_db.fingerprint()
        assert request.tags["billing/try"] == "1"
    assert service_dates.get_partition_keys(current_time=tick)[-1] == "2026-06-16"
    cursor = json.loads(data.cursor or "{}")
    assert cursor["evaluated_at"] == tick.isoformat() and set(cursor["launched"]) == keys

    # Not done yet (the runs did not happen here): launched again once the backoff passed.
    assert not evaluate(zones_db, tick + timedelta(minutes=9)).run_requests
    again = evaluate(zones_db, tick + timedelta(minutes=10))
    assert {r.tags["billing/try"] for r in again.run_requests or []} == {"2"}
    assert not ({r.run_key for r in again.run_requests or []} & keys)


def test_sensor_and_ledger_schedule_definitions() -> None:
    assert launch_due_nights.minimum_interval_seconds == 30
    assert launch_due_nights.default_status == dg.DefaultSensorStatus.RUNNING
    assert set(launch_due_nights.required_resource_keys) == {"db", "clock"}
    assert night_ledger_schedule.cron_schedule == "*/15 * * * *"
    assert night_ledger_schedule.execution_timezone == "UTC"


def test_a_database_without_practices_skips(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    upgrade(get_engine(url))
    try:
        result = evaluate(BillingDatabase(url=url), utc("2026-06-16T07:00:00"))
        assert not result.run_requests and result.skip_reason
    finally:
        dispose_engines()
