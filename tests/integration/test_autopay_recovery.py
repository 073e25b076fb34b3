"""AutoPay recovers at once (issue 15): a night re-run straight after its run died, after Stripe
was unreachable for part of it, or after its database connections were cut, charges every
client exactly once, leaves every attempt succeeded and every bill paid, never shares a charged
bill as open, and reconciles clean, with the default settings.

Everything goes through the real `billing-pipeline simulate` (the production chain job with the
logical clock, then the delivery sensor's logic) in a process of its own (`python -m
billing_pipeline.cli`, forked from a server that has Dagster imported: tests/integration/
forked.py), against localstripe over HTTP. A kill is a real SIGKILL of that process, from the
test-only hook of billing_pipeline/testing.py (`BILLING_FAULT=<point>@<n>`: the n-th time the
process reaches the point) at about a quarter, half and three quarters of the night's charges.

The night is loaded through the CLI (`scenario load`: 60 clients, their cards registered in
localstripe) once per pytest process and backend; each test starts from a fresh copy of that
database and a localstripe of its own holding those cards and nothing else.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select, text

from billing_pipeline.db import models as m
from billing_pipeline.db.engine import dispose_engines, get_engine, upgrade
from billing_pipeline.resources.database import BillingDatabase
from billing_pipeline.resources.payments import Payments
from billing_pipeline.services.autopay import ledger_drift
from billing_pipeline.testing import FAULT_ENV, FaultPoint
from tests.conftest import PG_ADMIN_URL, create_pg_database, drop_pg_database
from tests.integration import forked
from tests.integration.autopay_harness import (
    API_KEY,
    FIRST_NIGHT,
    ROOT,
    Seen,
    StripeProxy,
    assert_charged_once,
    ledger,
    many_clients,
)
from tests.integration.forked import ForkedLocalStripe

CLIENTS = 60
NIGHT = FIRST_NIGHT


def night_scenario() -> dict[str, Any]:
    """60 AutoPay clients with good cards, one session each; bills shared 60 minutes after
    they are made, so after the night's AutoPay (00:30)."""
    doc = many_clients(CLIENTS, 1)
    defaults = doc["accounts"][0]["settings"]["new_client_defaults"]
    defaults.update(share_bills=True, bill_delay_minutes=60)
    return doc


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m billing_pipeline.cli *args`, run to its end (forked: forked.py)."""
    return forked.run_module("billing_pipeline.cli", args, env=env, timeout=600)


def start_cli(env: dict[str, str], *args: str) -> forked.Forked:
    """`python -m billing_pipeline.cli *args`, started (forked: forked.py)."""
    return forked.start_module("billing_pipeline.cli", args, env=env)


@dataclass(frozen=True)
class LoadedNight:
    """The night loaded through the CLI once per pytest process and backend: its database (a
    SQLite file, or a PostgreSQL database used as a template) and a snapshot of the localstripe
    that its cards were registered in."""

    url: str
    stripe_store: Path


Nights = Callable[[str], LoadedNight]


@pytest.fixture(scope="session")
def loaded_nights(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Nights]:
    """backend ("sqlite", "postgres") -> its LoadedNight, loaded on first use."""
    folder = tmp_path_factory.mktemp("loaded-night")
    loaded: dict[str, LoadedNight] = {}

    def night(backend: str) -> LoadedNight:
        if backend not in loaded:
            loaded[backend] = load_night(backend, folder / backend)
        return loaded[backend]

    yield night
    for done in loaded.values():
        if done.url.startswith("postgresql"):
            drop_pg_database(done.url)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(
    request: pytest.FixtureRequest, tmp_path: Path, loaded_nights: Nights
) -> Iterator[str]:
    """conftest's, with the night in it: a fresh copy of the loaded night, on each backend."""
    url = copy_database(loaded_nights(request.param).url, tmp_path)
    yield url
    if url.startswith("sqlite"):
        dispose_engines()
    else:
        drop_pg_database(url)


@pytest.fixture
def localstripe(database_url: str, loaded_nights: Nights) -> Iterator[ForkedLocalStripe]:
    """A localstripe of this test's own, holding the cards the night was loaded with and
    nothing else: these nights make hundreds of PaymentIntents, and reconciliation lists them
    all (localstripe has no filter), so a shared one slows every later test of the worker."""
    backend = "sqlite" if database_url.startswith("sqlite") else "postgres"
    with ForkedLocalStripe(snapshot_from=loaded_nights(backend).stripe_store) as server:
        yield server


@pytest.fixture
def env(cli_env: dict[str, str], engine: Engine) -> dict[str, str]:
    """The CLI's environment on this test's copy of the loaded night (on each backend)."""
    return full_env(cli_env)


def simulate(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return cli(env, "simulate", "--from", NIGHT.isoformat(), "--to", NIGHT.isoformat())


def succeeded(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(
            select(func.count())
            .select_from(m.AutopayAttempt)
            .where(m.AutopayAttempt.status == "succeeded")
        ).scalar_one()


def assert_recovered(engine: Engine, database_url: str, stripe_url: str) -> None:
    """Every client charged exactly once in Stripe, every attempt succeeded in our books,
    every bill paid, every bill shared as paid (never as open), and a clean reconciliation."""
    book = ledger(engine, stripe_url)
    assert_charged_once(book)
    assert len(book.attempts) == CLIENTS
    assert {a.status for a in book.attempts} == {"succeeded"}
    assert len(book.bills) == CLIENTS and {b.status for b in book.bills} == {"paid"}
    assert len({a.client_id for a in book.attempts}) == CLIENTS
    with engine.connect() as conn:
        shared = conn.execute(
            select(m.Delivery.delivered_at, m.Delivery.bill_status_at_delivery).where(
                m.Delivery.document_type == "bill"
            )
        ).all()
        portal = conn.execute(
            select(m.PortalShare.bill_status).where(m.PortalShare.document_type == "bill")
        ).all()
    assert len(shared) == CLIENTS
    assert all(d is not None for d, _ in shared)
    assert {s for _, s in shared} == {"paid"}  # no delivery said "open" for a charged bill
    assert len(portal) == CLIENTS and {s for (s,) in portal} == {"paid"}
    drift = ledger_drift(
        BillingDatabase(url=database_url),
        Payments(api_key=API_KEY, api_base=stripe_url),
        ["acct-ap"],
        [NIGHT],
    )
    assert drift[NIGHT].clean, drift[NIGHT].counts()


KILLS = [
    pytest.param(FaultPoint.AFTER_STRIPE_SUCCESS, CLIENTS // 4, id="quarter-after_stripe"),
    pytest.param(FaultPoint.BEFORE_STRIPE, CLIENTS // 2, id="half-before_stripe"),
    pytest.param(FaultPoint.AFTER_OUTCOME, 3 * CLIENTS // 4, id="three_quarters-after_outcome"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("point", "nth"), KILLS)
def test_a_night_run_again_at_once_after_a_kill_charges_everyone_once(
    point: FaultPoint,
    nth: int,
    env: dict[str, str],
    engine: Engine,
    database_url: str,
    localstripe: ForkedLocalStripe,
) -> None:
    killed = simulate({**env, FAULT_ENV: f"{point.value}@{nth}"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    book = ledger(engine, localstripe.url)
    pending = [a for a in book.attempts if a.status == "pending"]
    assert pending, "the kill left no work half done"
    assert len(book.attempts) < CLIENTS  # claimed in batches, not the whole night up front
    if point == FaultPoint.AFTER_STRIPE_SUCCESS:
        ours = {a.stripe_payment_intent_id for a in book.attempts_with("succeeded")}
        assert {i.id for i in book.succeeded_intents()} - ours  # Stripe has charges we lack
    with engine.connect() as conn:
        early = conn.execute(
            select(func.count()).select_from(m.Delivery).where(m.Delivery.delivered_at.is_not(None))
        ).scalar_one()
    assert early == 0

    again = simulate(env)  # at once, with the default settings
    assert again.returncode == 0, again.stderr[-3000:]
    assert_recovered(engine, database_url, localstripe.url)


@pytest.mark.slow
def test_a_night_run_again_after_stripe_was_unreachable_for_part_of_it(
    env: dict[str, str], engine: Engine, database_url: str, localstripe: ForkedLocalStripe
) -> None:
    down = threading.Event()

    def outage(seen: Seen, _n: int) -> object:
        if not down.is_set():
            return "forward"
        if seen.method == "POST" and seen.path == "/v1/payment_intents":
            return "forward_then_500"  # Stripe charged; we never heard
        return (503, {})

    with StripeProxy(localstripe.url, outage) as proxy:
        run = start_cli(
            {**env, "STRIPE_API_BASE": proxy.url},
            "simulate",
            "--from",
            NIGHT.isoformat(),
            "--to",
            NIGHT.isoformat(),
        )
        wait_until(lambda: succeeded(engine) >= CLIENTS // 4, run)
        down.set()
        time.sleep(6)
        down.clear()
        _, err = run.communicate(timeout=600)
    # The practice's AutoPay did not finish: simulate says so, naming it, and fails.
    assert run.returncode == 1, err[-3000:]
    assert "autopay_attempts.every_practice_done" in err and "acct-ap" in err
    assert "no known outcome" in err
    book = ledger(engine, localstripe.url)
    assert [a for a in book.attempts if a.status == "pending"]
    assert_no_open_share_of_a_charged_bill(engine, localstripe.url)

    again = simulate(env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert_recovered(engine, database_url, localstripe.url)


@pytest.mark.slow
@pytest.mark.postgres
def test_a_night_run_again_after_its_database_connections_were_cut(
    tmp_path: Path, loaded_nights: Nights
) -> None:
    """PostgreSQL only: an embedded SQLite file has no connections a server could cut."""
    night = loaded_nights("postgres")
    url = copy_database(night.url, tmp_path)
    try:
        with ForkedLocalStripe(snapshot_from=night.stripe_store) as localstripe:
            engine = get_engine(url)
            upgrade(engine)
            home = tmp_path / "dagster_home"
            home.mkdir()
            cli_env = {
                "BILLING_DATABASE_URL": url,
                "STRIPE_API_KEY": API_KEY,
                "STRIPE_API_BASE": localstripe.url,
                "DAGSTER_HOME": str(home),
                "BILLING_DATA_DIR": str(tmp_path / "data"),
            }
            env = full_env(cli_env)
            run = start_cli(env, "simulate", "--from", NIGHT.isoformat(), "--to", NIGHT.isoformat())
            wait_until(lambda: succeeded(engine) >= CLIENTS // 3, run)
            cut_connections(url)
            _, err = run.communicate(timeout=600)
            assert run.returncode == 1, err[-3000:]
            assert "acct-ap" in err
            assert_no_open_share_of_a_charged_bill(engine, localstripe.url)

            again = simulate(env)
            assert again.returncode == 0, again.stderr[-3000:]
            assert_recovered(engine, url, localstripe.url)
    finally:
        drop_pg_database(url)


# --- helpers ------------------------------------------------------------------------------------


def full_env(cli_env: dict[str, str]) -> dict[str, str]:
    """This process's environment with the CLI's settings, and no crash hook."""
    full = {k: v for k, v in os.environ.items() if k != FAULT_ENV}
    full.update(cli_env, PYTHONPATH=str(ROOT))
    return full


def load_night(backend: str, folder: Path) -> LoadedNight:
    """The night loaded through the CLI (`scenario load`) into a new database on `backend`,
    its cards registered in a new localstripe, whose store is then kept in a file."""
    folder.mkdir(parents=True)
    if backend == "sqlite":
        url = f"sqlite:///{folder / 'billing.db'}"
    else:
        url = create_pg_database(migrated=True)
    path = folder / "night.json"
    path.write_text(json.dumps(night_scenario()))
    with ForkedLocalStripe() as stripe:
        env = full_env(
            {
                "BILLING_DATABASE_URL": url,
                "STRIPE_API_KEY": "sk_test_billing_pipeline",
                "STRIPE_API_BASE": stripe.url,
                "DAGSTER_HOME": str(folder / "dagster_home"),
                "BILLING_DATA_DIR": str(folder / "data"),
            }
        )
        loaded = cli(env, "scenario", "load", str(path))
        assert loaded.returncode == 0, loaded.stderr[-2000:]
        store = stripe.snapshot(folder / "stripe.pickle")
    if backend == "sqlite":
        # The loading process left the file in WAL mode: fold the log in, so that the file
        # alone is the whole database (the last connection to close removes the log).
        database = folder / "billing.db"
        with closing(sqlite3.connect(database)) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        assert not database.with_name("billing.db-wal").exists()
    return LoadedNight(url, store)


def copy_database(url: str, tmp_path: Path) -> str:
    """A new database that is a copy of `url`'s: a file copy on SQLite, CREATE DATABASE ...
    TEMPLATE on PostgreSQL (the template has no connection open: nothing keeps one)."""
    if url.startswith("sqlite"):
        path = tmp_path / "billing.db"
        shutil.copyfile(url.split("///", 1)[1], path)
        return f"sqlite:///{path}"
    from sqlalchemy import create_engine

    name = f"bp_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{url.rsplit("/", 1)[1]}"'))
    finally:
        admin.dispose()
    return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"


def wait_until(condition: Any, run: forked.Forked, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if run.poll() is not None:
            raise AssertionError(f"the run ended first: {run.stderr_text()[-3000:]}")
        if time.monotonic() > deadline:
            raise TimeoutError("the run never got there")
        time.sleep(0.05)


def cut_connections(url: str) -> None:
    """Every session on the billing database is ended by the server, as when a network
    partition or a failover drops them."""
    from sqlalchemy import create_engine

    name = url.rsplit("/", 1)[1]
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        cut = conn.execute(
            text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = :name AND pid <> pg_backend_pid()"
            ),
            {"name": name},
        ).scalar_one()
    admin.dispose()
    assert cut >= 1


def assert_no_open_share_of_a_charged_bill(engine: Engine, stripe_url: str) -> None:
    """Whatever was shared meanwhile: no bill that Stripe charged was shown as open."""
    book = ledger(engine, stripe_url)
    charged_attempts = {int(i.metadata["attempt_id"]) for i in book.succeeded_intents()}
    charged_bills = {b for a in charged_attempts for b in book.covered.get(a, [])}
    with engine.connect() as conn:
        open_shares = {
            r.document_id
            for r in conn.execute(
                select(m.PortalShare.document_id).where(
                    m.PortalShare.document_type == "bill", m.PortalShare.bill_status == "open"
                )
            )
        }
    assert not open_shares & charged_bills
