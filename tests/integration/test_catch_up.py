"""No lost night (issue 9): the `launch_due_nights` sensor decides from the database what is due,
so a daemon that was away three days, or a run that failed once, ends with exactly what an
uninterrupted schedule makes.

The clock is logical and steps through the nights every 30 minutes: at each instant the real
sensor is evaluated (Dagster's `build_sensor_context`, on a real instance) and every run it
requests is executed in process, with the same resources as production except the clock
(`Clock(mode="logical", at=...)`), until it requests nothing more. During the outage nothing
is evaluated at all, as when the daemon is down. At the end the delivery sensor's runs go as
in `simulate`. "Uninterrupted" is `simulate` of the same nights on a second database: the
scheduled instant of every step, night after night (tests/contract checks it against hand-worked
expectations). The reports are compared without our ids and the delivery instants.

The scenario (tests/scenarios/lost_nights.json) has practices in New York, Berlin and Kolkata;
the outage covers the month end (Berlin's monthly bills), the superbill day and the statements
(Nov 1), and Berlin's and New York's ends of daylight saving time.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from sqlalchemy import select

from billing_pipeline.db import models as m
from billing_pipeline.db.engine import dispose_engines, get_engine
from billing_pipeline.resources.clock import Clock
from billing_pipeline.resources.database import BillingDatabase
from billing_pipeline.resources.notifier import Notifier
from billing_pipeline.simulate import QUIET_LOGS
from billing_pipeline.testing import STEP_FAULT_ENV, reset_step_faults
from tests.contract.runner import (
    REPORT_LISTS,
    cli_in_process,
    environment,
    report_multisets,
    report_of,
    simulate_in_process,
)
from tests.simulated import Simulations

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = ROOT / "tests" / "scenarios" / "lost_nights.json"
FIRST, LAST = date(2026, 10, 25), date(2026, 11, 2)
START = datetime(2026, 10, 25, 0, 0, tzinfo=UTC)  # before any client exists
END = datetime(2026, 11, 3, 6, 0, tzinfo=UTC)  # after New York's AutoPay of Nov 2
TICK = timedelta(minutes=30)
# Three days and six hours: the nights of Oct 28 .. Oct 31 in every zone, the month end, the
# superbill day and the statements.
OUTAGE = (datetime(2026, 10, 29, 0, 0, tzinfo=UTC), datetime(2026, 11, 1, 6, 0, tzinfo=UTC))
NOT_COMPARED = ("id", "document_id", "delivered_at", "bill_status_at_delivery")


def _differences(ours: dict[str, Any], theirs: dict[str, Any]) -> str:
    a, b = report_multisets(ours, NOT_COMPARED), report_multisets(theirs, NOT_COMPARED)
    lines = []
    for name in REPORT_LISTS:
        for side, items in (
            ("caught up only", a[name] - b[name]),
            ("schedule only", b[name] - a[name]),
        ):
            lines += [f"{name}, {side} ({n}x): {item}" for item, n in sorted(items.items())]
    return "\n".join(lines)


def _clock(at: datetime) -> dict[str, Any]:
    return {"mode": "logical", "at": at.isoformat()}


@contextmanager
def _instance(env: dict[str, str]) -> Iterator[dg.DagsterInstance]:
    with environment(env), dg.DagsterInstance.ephemeral() as instance:
        try:
            yield instance
        finally:
            dispose_engines()


def evaluate(instance: dg.DagsterInstance, at: datetime, cursor: str | None) -> dg.SensorResult:
    from billing_pipeline.definitions import defs

    sensor = defs.resolve_sensor_def("launch_due_nights")
    with dg.build_sensor_context(
        instance=instance,
        cursor=cursor,
        resources={"db": BillingDatabase(), "clock": Clock(mode="logical", at=at.isoformat())},
    ) as context:
        result = sensor(context)
    assert isinstance(result, dg.SensorResult), result
    return result


def run_requests(
    instance: dg.DagsterInstance, at: datetime, requests: list[dg.RunRequest]
) -> list[dg.DagsterRun]:
    """Execute each requested run in process, as the daemon's run launcher would, with the
    clock at `at`; the runs' own success is returned (a practice's failure fails its check,
    not always its run)."""
    from billing_pipeline.definitions import defs

    runs = []
    for request in requests:
        assert request.job_name
        job = defs.resolve_job_def(request.job_name)
        result = job.execute_in_process(
            instance=instance,
            partition_key=request.partition_key,
            tags=request.tags,
            run_config={**QUIET_LOGS, "resources": {"clock": {"config": _clock(at)}}},
            raise_on_error=False,
        )
        runs.append(result.dagster_run)
    return runs


def drive(
    instance: dg.DagsterInstance,
    start: datetime,
    end: datetime,
    outage: tuple[datetime, datetime] | None = None,
) -> list[tuple[datetime, dg.RunRequest]]:
    """Step the clock from `start` to `end`; at each instant outside the outage, evaluate the
    sensor and run what it requests until it requests nothing more. Returns the launches."""
    launched: list[tuple[datetime, dg.RunRequest]] = []
    cursor = None
    at = start
    while at <= end:
        if outage is None or not (outage[0] <= at < outage[1]):
            for _ in range(40):
                result = evaluate(instance, at, cursor)
                cursor = result.cursor
                if not result.run_requests:
                    break
                launched += [(at, r) for r in result.run_requests]
                run_requests(instance, at, list(result.run_requests))
            else:
                pytest.fail(f"the sensor kept launching at {at}")
        at += TICK
    return launched


def deliver(instance: dg.DagsterInstance) -> None:
    """The delivery sensor's runs at the end, exactly as `simulate` makes them."""
    from billing_pipeline.definitions import defs
    from billing_pipeline.simulate import logical_run_config

    until = LAST + timedelta(days=2)
    sensor = defs.resolve_sensor_def("deliver_due_documents")
    job = defs.resolve_job_def("deliver_documents_job")
    clock = Clock(mode="logical", until_date=until.isoformat())
    for _ in range(50):
        with dg.build_sensor_context(
            instance=instance,
            resources={"db": BillingDatabase(), "clock": clock, "notifier": Notifier()},
        ) as context:
            evaluation = sensor(context)
        if not isinstance(evaluation, dg.RunRequest):
            return
        run = job.execute_in_process(
            instance=instance, run_config=logical_run_config(until), tags=evaluation.tags
        )
        assert run.success


def scheduled_report(simulations: Simulations, env: dict[str, str]) -> dict[str, Any]:
    """`simulate` of the same nights, made once per backend for the session (the three fault
    cases compare against the same schedule)."""
    backend = "sqlite" if env["BILLING_DATABASE_URL"].startswith("sqlite") else "postgres"
    return simulations.get(SCENARIO, backend, (FIRST, LAST)).report


def step_rows(url: str) -> set[tuple[str, str, str]]:
    with get_engine(url).connect() as conn:
        rows = conn.execute(select(m.NightStep.account_id, m.NightStep.night, m.NightStep.step))
        return {(a, n.isoformat(), s) for a, n, s in rows}


# Kolkata's bills of Oct 26 fail once (before the outage), New York's AutoPay of the month end
# once (in the catch-up after it): each is launched again and then succeeds.
FAULTS = ("bills:acct-ln-kolkata:2026-10-26", "autopay_attempts:acct-bf-daily:2026-10-31")


def _step_of(fault: str) -> tuple[str, str, str]:
    """(account, night, step) of a fault."""
    asset, account, night = fault.split(":")
    return account, night, "autopay" if asset == "autopay_attempts" else "bills"


@pytest.mark.slow
def test_catching_up_after_three_days_down_and_two_failed_steps_makes_what_the_schedule_would_have(
    cli_env: dict[str, str], simulations: Simulations, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemon is down three days, and two steps fail once each (one before the outage, one
    in the catch-up after it): the nights end exactly as the schedule makes them."""
    done = cli_in_process(cli_env, "scenario", "load", str(SCENARIO))
    assert done.returncode == 0, done.stderr + done.stdout
    reset_step_faults()
    monkeypatch.setenv(STEP_FAULT_ENV, ",".join(FAULTS))
    with _instance(cli_env) as instance:
        launched = drive(instance, START, END, OUTAGE)
        deliver(instance)
        runs = instance.get_runs()
    monkeypatch.delenv(STEP_FAULT_ENV)
    caught_up = report_of(cli_env, run=cli_in_process)
    scheduled = scheduled_report(simulations, cli_env)

    assert scheduled["bills"] and scheduled["superbills"] and scheduled["statements"]
    assert {a["outcome"] for a in scheduled["autopay_attempts"]} >= {"succeeded", "declined"}
    assert not (diff := _differences(caught_up, scheduled)), diff

    # Every step of every practice's nights is recorded done, and nothing before the first
    # client: Oct 25 is the first night in each zone.
    steps = step_rows(cli_env["BILLING_DATABASE_URL"])
    nights = {n for _, n, _ in steps}
    assert min(nights) == FIRST.isoformat() and max(nights) == LAST.isoformat(), sorted(nights)
    # Practices x nights x records: eligible sessions, settings, bills, superbills and
    # statements at 00:00, AutoPay at 00:30.
    assert len(steps) == 3 * 9 * 6, len(steps)

    # The outage's nights were launched after it, in order: bills before AutoPay, night by
    # night, per practice.
    after = [(at, r) for at, r in launched if at >= OUTAGE[1]]
    assert after and after[0][0] == OUTAGE[1]
    order: dict[str, list[tuple[str, str]]] = {}
    for _, request in launched:
        for account in request.tags["billing/account_ids"].split(","):
            order.setdefault(account, []).append(
                (request.partition_key or "", request.tags["billing/step"])
            )
    for account, seq in order.items():
        assert seq == sorted(seq, key=lambda k: (k[0], k[1] != "bills")), (account, seq)

    # Each step was launched once, but a failed one twice: its try is counted, with its error.
    failed = {_step_of(f) for f in FAULTS}
    for account, seq in order.items():
        for night, step in set(seq):
            times = 2 if (account, night, step) in failed else 1
            assert seq.count((night, step)) == times, (account, night, step, seq)
    with get_engine(cli_env["BILLING_DATABASE_URL"]).connect() as conn:
        for account, night, step in failed:
            tries = conn.execute(
                select(m.NightStepTry.tries, m.NightStepTry.last_error).where(
                    m.NightStepTry.account_id == account,
                    m.NightStepTry.night == date.fromisoformat(night),
                    m.NightStepTry.step == step,
                )
            ).one()
            assert tries.tries == 2 and "InjectedFault" in (tries.last_error or ""), tries
    # Runs that did not hold a failed step all succeeded.
    for run in runs:
        accounts = run.tags.get("billing/account_ids", "").split(",")
        night, step = run.tags.get("dagster/partition"), run.tags.get("billing/step")
        if not any((a, night, step) in failed for a in accounts):
            assert run.status == dg.DagsterRunStatus.SUCCESS, run.tags
    # No PHI in what the sensor kept.
    assert "Asha" not in json.dumps([r.tags for _, r in launched])


def ledger(instance: dg.DagsterInstance, at: datetime) -> dg.AssetCheckEvaluation:
    """Materialise `night_ledger` with the clock at `at`; its check's evaluation."""
    from billing_pipeline.definitions import defs

    job = defs.resolve_job_def("night_ledger_job")
    run = job.execute_in_process(
        instance=instance, run_config={**QUIET_LOGS, "resources": {"clock": {"config": _clock(at)}}}
    )
    # The job also runs the freshness checks (newest_night_is_recent) on the same clock.
    (evaluation,) = [
        e for e in run.get_asset_check_evaluations() if e.check_name == "every_step_on_time"
    ]
    return evaluation


@pytest.mark.slow
def test_the_ledger_names_an_overdue_practice_until_it_is_caught_up_and_shows_missed_nights(
    cli_env: dict[str, str],
) -> None:
    done = cli_in_process(cli_env, "scenario", "load", str(SCENARIO))
    assert done.returncode == 0, done.stderr + done.stdout
    with _instance(cli_env) as instance:
        drive(instance, START, datetime(2026, 10, 27, 12, 0, tzinfo=UTC))
        assert ledger(instance, datetime(2026, 10, 27, 12, 0, tzinfo=UTC)).passed

        # The daemon stops after 12:00Z on Oct 27. At 06:00Z on Oct 28, Kolkata's night of
        # Oct 27 is late (00:00 IST = 18:30Z, 11.5 h), Berlin's too (23:00Z), New York's bills
        # (04:00Z) by two hours, its AutoPay (04:30Z) by an hour and a half.
        late = ledger(instance, datetime(2026, 10, 28, 6, 0, tzinfo=UTC))
        assert not late.passed and late.severity == dg.AssetCheckSeverity.ERROR
        overdue = late.metadata["overdue_practices"].value
        assert overdue == ["acct-bf-daily", "acct-bf-monthly", "acct-ln-kolkata"], overdue
        rows = {(r["account_id"], r["night"], r["step"]) for r in late.metadata["overdue"].value}
        assert ("acct-bf-daily", "2026-10-27", "bills") in rows
        assert "acct-bf-daily 2026-10-27 bills (due)" in (late.description or "")
        assert "missed" not in (late.description or "")
        # At 05:15Z New York's AutoPay was 45 minutes late: not yet overdue.
        early = ledger(instance, datetime(2026, 10, 28, 5, 15, tzinfo=UTC))
        early_rows = {(r["account_id"], r["step"]) for r in early.metadata["overdue"].value}
        assert ("acct-bf-daily", "bills") in early_rows
        assert ("acct-bf-daily", "autopay") not in early_rows

        # The daemon is back: the sensor catches up, and the check passes again.
        drive(
            instance,
            datetime(2026, 10, 28, 6, 0, tzinfo=UTC),
            datetime(2026, 10, 28, 6, 0, tzinfo=UTC),
        )
        caught_up = ledger(instance, datetime(2026, 10, 28, 6, 0, tzinfo=UTC))
        assert caught_up.passed, caught_up.description

        # Away for two weeks: nights older than the horizon (7 nights) are shown missed and not
        # launched; the horizon's oldest night is launched first.
        back = datetime(2026, 11, 12, 12, 0, tzinfo=UTC)
        result = evaluate(instance, back, None)
        nights = {r.partition_key for r in result.run_requests or []}
        assert nights == {"2026-11-05"}, nights
        missed = ledger(instance, back)
        assert not missed.passed
        by_practice = missed.metadata["missed_nights"].value
        # In every zone the last night ended at 12:00Z on Nov 12 is Nov 11: the horizon is
        # Nov 5 .. Nov 11, and Oct 28 .. Nov 4 (everything after the catch-up) are missed.
        assert by_practice == {
            a: {"first": "2026-10-28", "last": "2026-11-04", "nights": 8}
            for a in ("acct-bf-daily", "acct-bf-monthly", "acct-ln-kolkata")
        }, by_practice
        assert "missed nights to backfill" in (missed.description or "")


# --- For real: dagster-daemon on the wall clock ---------------------------------------------

# Zones to choose from so that the practice's local time is well past its 00:30 when the test
# runs (today's AutoPay instant has passed, tomorrow's is far away), whatever the hour in UTC.
ZONE_CHOICES = (
    "Pacific/Honolulu",
    "America/New_York",
    "Europe/London",
    "Asia/Kolkata",
    "Asia/Tokyo",
    "Pacific/Auckland",
)
DAEMON_CATCH_UP_SECONDS = 420
# The daemon evaluates the catch-up sensor every 2 s instead of 30: the six steps (three
# nights, bills then AutoPay) are launched one per evaluation, so the wait is mostly the runs.
DAEMON_SENSOR_INTERVAL = {"BILLING_CATCHUP_INTERVAL_SECONDS": "2"}


def _zone_at_midday() -> str:
    from zoneinfo import ZoneInfo

    now = datetime.now(UTC)
    return next(z for z in ZONE_CHOICES if 3 <= now.astimezone(ZoneInfo(z)).hour <= 21)


def _week_old_practice(tz: str, today: date) -> dict[str, Any]:
    """A daily practice whose client was created a week ago, with a session on each of the
    last three days (ids only matter; no AutoPay: no card)."""
    from zoneinfo import ZoneInfo

    zone = ZoneInfo(tz)
    created = datetime.combine(today - timedelta(days=7), datetime.min.time(), zone) + timedelta(
        hours=9
    )
    sessions = []
    for back in (3, 2, 1):
        day = today - timedelta(days=back)
        at = datetime.combine(day, datetime.min.time(), zone) + timedelta(hours=10)
        sessions.append(
            {
                "id": f"s-week-{back}",
                "client_id": "cl-week",
                "starts_at": at.isoformat(),
                "place_of_service": "11",
                "services": [{"cpt": "90834", "units": 1, "fee_cents": 15000}],
            }
        )
    return {
        "scenario": "week_old_practice",
        "accounts": [
            {
                "id": "acct-week",
                "name": "Week Old Practice",
                "timezone": tz,
                "npi": "1234567893",
                "tax_id": "12-3456789",
                "settings": {
                    "bill_creation": "daily",
                    "superbill_day_of_month": 1,
                    "autopay_enabled": False,
                    "new_client_defaults": {
                        "share_bills": False,
                        "bill_delay_minutes": 0,
                        "share_superbills": False,
                        "superbill_delay_minutes": 0,
                        "share_statements": False,
                        "statement_delay_minutes": 0,
                    },
                },
            }
        ],
        "billing_contacts": [],
        "clients": [
            {
                "id": "cl-week",
                "account_id": "acct-week",
                "name": "Wendy Week",
                "email": "wendy@example.com",
                "date_of_birth": "1980-01-01",
                "created_at": created.isoformat(),
                "billing_contact_id": None,
                "diagnoses": ["F41.1"],
                "payment_method": None,
                "settings": {},
            }
        ],
        "sessions": sessions,
    }


@pytest.mark.slow
@pytest.mark.parametrize(
    "database_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
def test_the_daemon_bills_the_missed_nights_within_minutes(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    """`dagster-daemon run -w workspace.yaml` on the wall clock, for a practice whose client
    was created a week ago and whose last three nights never ran (the four before ran, through
    `simulate`): the catch-up sensor bills those sessions within minutes, without waiting for
    the practice's next midnight. On production's backend only: the sensor's decisions on
    SQLite are the in-process tests' above; this one is about the daemon launching them."""
    from zoneinfo import ZoneInfo

    from dagster._core.instance.ref import InstanceRef

    from tests.integration.test_backfill import _daemon, _dagster_home

    tz = _zone_at_midday()
    today = datetime.now(UTC).astimezone(ZoneInfo(tz)).date()
    scenario = tmp_path / "week.json"
    scenario.write_text(json.dumps(_week_old_practice(tz, today)))
    done = cli_in_process(cli_env, "scenario", "load", str(scenario))
    assert done.returncode == 0, done.stderr + done.stdout
    first, ran_until = today - timedelta(days=7), today - timedelta(days=4)
    assert simulate_in_process(cli_env, first.isoformat(), ran_until.isoformat()) == []
    url = cli_env["BILLING_DATABASE_URL"]
    with get_engine(url).connect() as conn:
        assert not conn.execute(select(m.BillSession.session_id)).all()
    log = tmp_path / "daemon.log"
    with (
        _dagster_home(cli_env) as home,
        dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home))) as instance,
        _daemon({**cli_env, **DAEMON_SENSOR_INTERVAL}, log) as daemon,
    ):
        started = datetime.now(UTC)
        deadline = started + timedelta(seconds=DAEMON_CATCH_UP_SECONDS)
        billed: set[str] = set()
        steps: set[tuple[str, str]] = set()
        while datetime.now(UTC) < deadline and daemon.poll() is None:
            with get_engine(url).connect() as conn:
                billed = set(conn.execute(select(m.BillSession.session_id)).scalars())
                steps = {
                    (n.isoformat(), s)
                    for n, s in conn.execute(select(m.NightStep.night, m.NightStep.step))
                }
            if len(billed) == 3 and all(
                ((today - timedelta(days=b)).isoformat(), "autopay") in steps for b in (3, 2, 1)
            ):
                break
            dispose_engines()
            time.sleep(2)
        elapsed = (datetime.now(UTC) - started).total_seconds()
        runs = instance.get_runs()
        tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
    assert billed == {"s-week-3", "s-week-2", "s-week-1"}, (elapsed, sorted(steps), tail)
    launched = sorted(
        (r.tags.get("dagster/partition", ""), r.tags.get("billing/step", ""))
        for r in runs
        if r.tags.get("billing/step")
    )
    expected_nights = {(today - timedelta(days=b)).isoformat() for b in (3, 2, 1)}
    assert {n for n, _ in launched} == expected_nights, launched  # nothing older relaunched
    assert not [r.run_id for r in runs if r.status == dg.DagsterRunStatus.FAILURE], tail
