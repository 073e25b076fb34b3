"""Two runs of AutoPay at the same time on PostgreSQL charge no one twice: a database claim,
not timing.

The first test runs two real processes of the production `autopay_job` at once (released by a
barrier; forked from a server that has Dagster imported, tests/integration/forked.py) against a
slow localstripe, so they overlap, and checks Stripe. The others force the
two interleavings that matter, step by step on two connections, so they do not depend on luck:
the second insert of a key waits for the first run and stands back; and a run that read the
bills before another run recorded their payment does not charge them again.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from billing_pipeline.db import autopay as records
from billing_pipeline.db.engine import get_engine, make_engine, upgrade
from billing_pipeline.domain.autopay import Outcome, idempotency_key
from billing_pipeline.localstripe_server import LocalStripe
from tests.conftest import create_pg_database, drop_pg_database
from tests.integration.autopay_harness import (
    FIRST_NIGHT,
    assert_charged_once,
    client,
    driver_env,
    ledger,
    load,
    make_bills,
    many_clients,
    run_driver,
    scenario,
    session,
    start_driver,
)
from tests.integration.forked import ForkedLocalStripe

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

N1, N2, N3 = (FIRST_NIGHT + timedelta(days=i) for i in range(3))
CLIENTS = 8
STANDING_BACK = (
    "claimed_by_another_run",
    "already_attempted",
    "skipped_attempt_pending",
    "bills_changed_during_claim",
)


@pytest.fixture
def pg_url() -> Iterator[str]:
    url = create_pg_database()
    upgrade(get_engine(url))
    yield url
    drop_pg_database(url)


def _concurrent(
    env: dict[str, str], nights: tuple[Any, Any], barrier: Path
) -> list[dict[str, Any]]:
    procs = [
        start_driver(
            env,
            night,
            night,
            "--job",
            "autopay_job",
            "--barrier",
            str(barrier),
            "--parties",
            "2",
            "--max-workers",
            "4",
        )
        for night in nights
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    results = []
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


@pytest.mark.slow
def test_two_simultaneous_runs_charge_no_one_twice(pg_url: str, tmp_path: Path) -> None:
    engine = get_engine(pg_url)
    # Slow enough that the two runs' charges overlap for seconds.
    with ForkedLocalStripe(latency_ms=150) as slow:
        load(engine, many_clients(CLIENTS, 3), tmp_path, slow.url)
        for night in (N1, N2, N3):
            make_bills(pg_url, night)
        env = driver_env(pg_url, slow.url)
        standing_back = 0
        # The same night twice at once; then two nights at once whose bills overlap (the
        # schedule's night beside a backfill of the night before it).
        for i, nights in enumerate([(N1, N1), (N2, N3)]):
            a, b = _concurrent(env, nights, tmp_path / f"barrier-{i}")
            assert a["success"] and b["success"]
            # Each run's reconciliation saw the other's charges in flight: no false alarm.
            assert a["failed_checks"] == [] and b["failed_checks"] == []
            assert a["started"] < b["ended"] and b["started"] < a["ended"]  # they overlapped
            for run in (a, b):
                figures = run["figures"]["acct-ap"]
                standing_back += sum(figures.get(k, 0) for k in STANDING_BACK)
            assert_charged_once(ledger(engine, slow.url))
        assert standing_back >= CLIENTS  # the second run of N1 found every client claimed
        # Whatever the second round left for N3 is charged by the next run, once.
        make_bills(pg_url, N3)
        done = run_driver(env, N3, N3, "--job", "autopay_job")
        assert done.returncode == 0, done.stderr[-3000:]
        book = ledger(engine, slow.url)
        assert {b.status for b in book.bills} == {"paid"}
        assert [a.id for a in book.attempts if a.status == "pending"] == []
        assert_charged_once(book)


# --- The interleavings, forced ------------------------------------------------------------------


def _one_client(pg_url: str, tmp_path: Path, localstripe: LocalStripe) -> Engine:
    engine = get_engine(pg_url)
    load(
        engine,
        scenario(
            [client("cl-race", {"card": "4242424242424242", "exp_month": 12, "exp_year": 2030})],
            [session("cl-race", N1), session("cl-race", N2)],
        ),
        tmp_path,
        localstripe.url,
    )
    make_bills(pg_url, N1)
    make_bills(pg_url, N2)
    return engine


def _claim(conn: Any, night: Any, bills: list[records.OpenBill]) -> Any:
    return records.claim_attempt(
        conn,
        key=idempotency_key("cl-race", "pm-client-cl-race", night),
        account_id="acct-ap",
        client_id="cl-race",
        night=night,
        payer="client",
        payer_id="cl-race",
        payment_method_id="pm-client-cl-race",
        bills=bills,
        attempted_at=datetime.now(UTC),
        owner="test-run|host|1|0",
        lease_expires_at=datetime.now(UTC) + timedelta(minutes=1),
    )


def test_the_second_claim_of_a_key_waits_for_the_first_run_and_stands_back(
    pg_url: str, tmp_path: Path, localstripe: LocalStripe
) -> None:
    _one_client(pg_url, tmp_path, localstripe)
    run_a, run_b = make_engine(pg_url), make_engine(pg_url)  # two runs, two pools
    now = datetime.now(UTC)
    with run_a.connect() as a, run_b.connect() as b:
        a.begin()
        b.begin()
        bills_a = records.open_bills(a, "cl-race", now)
        bills_b = records.open_bills(b, "cl-race", now)
        assert bills_a == bills_b and len(bills_a) == 2
        claimed = _claim(a, N2, bills_a)  # A inserted, not committed yet
        assert isinstance(claimed, records.ClaimedAttempt)
        got: list[Any] = []
        waiting = threading.Thread(target=lambda: got.append(_claim(b, N2, bills_b)))
        waiting.start()
        waiting.join(1.0)
        assert waiting.is_alive()  # B waits on A's uncommitted key: no guess, no timing
        a.commit()
        waiting.join(10)
        assert got == [records.ClaimRefused.TAKEN]
        b.commit()
    run_a.dispose()
    run_b.dispose()


def test_a_run_that_read_the_bills_before_another_paid_them_does_not_claim_them(
    pg_url: str, tmp_path: Path, localstripe: LocalStripe
) -> None:
    engine = _one_client(pg_url, tmp_path, localstripe)
    now = datetime.now(UTC)
    # Run A (night N1) has claimed the first bill and is charging it.
    with engine.begin() as conn:
        first_bill = records.open_bills(conn, "cl-race", now)[:1]
        attempt = _claim(conn, N1, first_bill)
        assert isinstance(attempt, records.ClaimedAttempt)
    run_b = make_engine(pg_url)
    with run_b.connect() as b:
        b.begin()
        # Run B (a backfill of N2) reads the open bills: both, the first still open...
        read_by_b = records.open_bills(b, "cl-race", now)
        assert len(read_by_b) == 2
        # ...then A records its success (the first bill is paid) and commits...
        with engine.begin() as conn:
            assert records.record_outcome(
                conn,
                attempt.id,
                Outcome.SUCCEEDED,
                payment_intent_id="pi_race_test",
                failure_code=None,
                at=now,
            )
        # ...and B, claiming what it read, must not charge the paid bill again.
        assert _claim(b, N2, read_by_b) == records.ClaimRefused.BILLS_CHANGED
        b.commit()
    run_b.dispose()
    with engine.connect() as conn:
        history = records.attempt_history(conn, "cl-race")
        second = records.open_bills(conn, "cl-race", now)
    assert [a.outcome for a in history] == [Outcome.SUCCEEDED]
    assert len(second) == 1  # the next claim covers only the bill still open
