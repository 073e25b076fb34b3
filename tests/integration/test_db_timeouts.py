"""Bounded waits on PostgreSQL: a statement that waits too long for a lock, or runs too long,
is cancelled by the server and raised as DatabaseBusy naming its tables and the timeout.
A night whose bills table is locked fails for its practice within seconds, loudly and
without PHI, and the next run makes the night, once. A database that does not answer says
which, in a Dagster run too."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from sqlalchemy import Engine, create_engine, func, select, text

from billing_pipeline.assets.billing import bills
from billing_pipeline.assets.chain import chain_through
from billing_pipeline.assets.sessions import eligible_sessions
from billing_pipeline.config import LOCK_TIMEOUT_ENV, STATEMENT_TIMEOUT_ENV
from billing_pipeline.db import models as m
from billing_pipeline.db.engine import dispose_engines, get_engine, upgrade
from billing_pipeline.resources.clock import Clock
from billing_pipeline.resources.database import BillingDatabase, DatabaseBusy
from tests.conftest import create_pg_database, drop_pg_database
from tests.integration.autopay_harness import FIRST_NIGHT, check_evaluations, load, many_clients

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

LOCK_SECONDS = 2
# Far above the lock timeout, far below forever: a run still waiting then is hanging.
HANG_SECONDS = 60


@pytest.fixture
def pg_url(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A new billing database on PostgreSQL, with engines made under a 2 s lock timeout."""
    monkeypatch.setenv(LOCK_TIMEOUT_ENV, str(LOCK_SECONDS))
    monkeypatch.delenv(STATEMENT_TIMEOUT_ENV, raising=False)
    dispose_engines()  # engines are cached per URL: none may predate the setting
    url = create_pg_database()
    yield url
    drop_pg_database(url)


@pytest.fixture
def pg_engine(pg_url: str) -> Engine:
    engine = get_engine(pg_url)
    upgrade(engine)
    return engine


def bills_night(url: str, night: date) -> Any:
    """The 00:00 step of a night (eligible sessions, settings, bills) through the real assets."""
    return dg.materialize(
        chain_through(bills),
        partition_key=night.isoformat(),
        resources={
            "db": BillingDatabase(url=url),
            "clock": Clock(mode="logical", until_date=(night + timedelta(days=2)).isoformat()),
        },
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
    )


class TableLock:
    """`LOCK TABLE ... IN ACCESS EXCLUSIVE MODE` held by another connection (its own engine,
    without our timeouts) until released, or until HANG_SECONDS so a hanging run ends."""

    def __init__(self, url: str, table: str) -> None:
        self.url, self.table = url, table
        self.locked, self.release = threading.Event(), threading.Event()
        self.thread = threading.Thread(target=self._hold, daemon=True)

    def _hold(self) -> None:
        engine = create_engine(self.url)
        try:
            with engine.connect() as conn:
                conn.execute(text(f"LOCK TABLE {self.table} IN ACCESS EXCLUSIVE MODE"))
                self.locked.set()
                self.release.wait(HANG_SECONDS)
                conn.rollback()
        finally:
            engine.dispose()

    def __enter__(self) -> TableLock:
        self.thread.start()
        assert self.locked.wait(30), "could not lock the table"
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.thread.join(30)


def made(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {
            "bills": conn.execute(select(func.count()).select_from(m.Bill.__table__)).scalar_one(),
            "bill_sessions": conn.execute(
                select(func.count()).select_from(m.BillSession.__table__)
            ).scalar_one(),
        }


def test_a_locked_bills_table_fails_the_practice_within_seconds_and_the_next_run_bills_once(
    pg_url: str, pg_engine: Engine, localstripe, tmp_path: Path
) -> None:
    load(pg_engine, many_clients(3, 1), tmp_path, localstripe.url)
    night = FIRST_NIGHT

    with TableLock(pg_url, "bills"):
        started = time.monotonic()
        result = bills_night(pg_url, night)
        took = time.monotonic() - started
    assert took < HANG_SECONDS - 10, f"the run waited for the lock ({took:.0f} s)"
    assert took < 10 * LOCK_SECONDS + 20, took

    evaluation = check_evaluations(result)[("bills", "every_practice_done")]
    assert not evaluation.passed
    failed = evaluation.metadata["failed_practices"].value
    assert set(failed) == {"acct-ap"}
    why = failed["acct-ap"]
    assert why == (
        f"{night}: a statement on table bills waited more than {LOCK_SECONDS} s for a lock and "
        f"was cancelled ({LOCK_TIMEOUT_ENV})"
    )
    assert f"acct-ap ({why})" in (evaluation.description or "")
    assert made(pg_engine) == {"bills": 0, "bill_sessions": 0}  # rolled back whole

    # The lock is gone: the next run makes the night...
    again = bills_night(pg_url, night)
    assert again.success
    assert check_evaluations(again)[("bills", "every_practice_done")].passed
    after = made(pg_engine)
    assert after == {"bills": 3, "bill_sessions": 3}
    # ...and a third makes nothing twice.
    third = bills_night(pg_url, night)
    assert third.success
    assert made(pg_engine) == after


def test_a_read_waiting_for_a_lock_is_cancelled_and_not_retried(
    pg_url: str, pg_engine: Engine
) -> None:
    db = BillingDatabase(url=pg_url)
    calls = 0

    def work(conn: Any) -> int:
        nonlocal calls
        calls += 1
        return conn.execute(select(func.count()).select_from(m.Bill.__table__)).scalar_one()

    with TableLock(pg_url, "bills"):
        started = time.monotonic()
        with pytest.raises(DatabaseBusy) as read, pg_engine.connect() as conn:
            conn.execute(text("SELECT b.id FROM bills AS b JOIN bill_lines ON true")).all()
        with pytest.raises(DatabaseBusy) as transacted:
            db.transact(work)
        took = time.monotonic() - started
    assert str(read.value) == (
        f"a statement on tables bills, bill_lines waited more than {LOCK_SECONDS} s for a lock "
        f"and was cancelled ({LOCK_TIMEOUT_ENV})"
    )
    assert read.value.tables == ("bills", "bill_lines")
    assert transacted.value.timeout_env == LOCK_TIMEOUT_ENV
    assert calls == 1  # a lock timeout is not run again inside transact
    assert took < 4 * LOCK_SECONDS + 5, took
    with pg_engine.connect() as conn:  # the pool's connection still works
        assert conn.execute(text("SELECT count(*) FROM bills")).scalar_one() == 0


def test_a_statement_running_too_long_is_cancelled_naming_its_table(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(STATEMENT_TIMEOUT_ENV, "0.5")
    dispose_engines()
    engine = get_engine(pg_url)
    upgrade(engine)
    with pytest.raises(DatabaseBusy) as caught, engine.connect() as conn:
        conn.execute(text("SELECT pg_sleep(3) FROM (SELECT 1) AS one LEFT JOIN bills ON false"))
    assert str(caught.value) == (
        "a statement on table bills ran longer than 0.5 s and was cancelled "
        f"({STATEMENT_TIMEOUT_ENV})"
    )
    with engine.connect() as conn:
        settings = (
            conn.execute(text("SHOW lock_timeout")).scalar_one(),
            conn.execute(text("SHOW statement_timeout")).scalar_one(),
        )
    assert settings == ("2s", "500ms")


def test_a_dagster_run_says_which_database_does_not_answer_never_its_password(
    tmp_path: Path,
) -> None:
    url = "postgresql://postgres:secretpw@127.0.0.1:1/nodb"
    result = dg.materialize(
        [eligible_sessions],
        partition_key=FIRST_NIGHT.isoformat(),
        resources={
            "db": BillingDatabase(url=url),
            "clock": Clock(mode="logical", until_date="2026-11-04"),
        },
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
    )
    assert not result.success
    failures = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert len(failures) == 1
    error = failures[0].event_specific_data.error
    ours = error.cause  # Dagster's step error wraps the asset's own
    assert ours is not None and ours.cls_name == "DatabaseUnreachable", error.to_string()
    assert ours.message.strip() == (
        "billing_pipeline.db.errors.DatabaseUnreachable: billing database "
        "postgresql://postgres@127.0.0.1:1/nodb does not answer: connection refused"
    ), ours.message
    assert "secretpw" not in error.to_string()
