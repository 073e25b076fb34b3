"""Whose is a pending AutoPay attempt: a run's claim lock dies with its process (PostgreSQL
advisory lock, flock on SQLite), its lease runs out when nobody renews it, and Dagster's word
that the run failed ends it too."""

from __future__ import annotations

import signal
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.storage.dagster_run import DagsterRun
from sqlalchemy import Engine, select, update

from billing_pipeline.db import models as m
from billing_pipeline.db.owners import ClaimOwner, OwnerProbe, run_id_of
from billing_pipeline.localstripe_server import LocalStripe
from billing_pipeline.resources.payments import Payments
from tests.integration import forked
from tests.integration.autopay_harness import (
    API_KEY,
    FIRST_NIGHT,
    assert_charged_once,
    autopay_figures,
    ledger,
    load,
    many_clients,
    run_night,
)

pytestmark = pytest.mark.slow  # Dagster runs and forked holders: not for the fast tier

HOLD = """
import sys, time
from datetime import timedelta
from billing_pipeline.db.engine import get_engine
from billing_pipeline.db.owners import ClaimOwner
owner = ClaimOwner(get_engine(sys.argv[1]), "doomed-run", timedelta(seconds=60))
owner.__enter__()
print(owner.token, flush=True)
time.sleep(600)
"""


def test_a_live_owners_lock_is_held_and_released_when_it_finishes(engine: Engine) -> None:
    probe = OwnerProbe(engine)
    owner = ClaimOwner(engine, "run-1", timedelta(seconds=60))
    assert run_id_of(owner.token) == "run-1"
    with owner:
        assert probe.lock_released(owner.token) is False
        assert probe.lock_released(owner.token) is False  # asking twice takes nothing
        assert owner.still_held()
    assert probe.lock_released(owner.token) is True


def test_a_killed_owners_lock_is_released_at_once(engine: Engine, database_url: str) -> None:
    # `python -c HOLD url`, forked from the server that has the project imported (forked.py).
    holder = forked.start_code(HOLD, [database_url])
    try:
        token = _first_line(holder)
        probe = OwnerProbe(engine)
        assert probe.lock_released(token) is False
        holder.send_signal(signal.SIGKILL)
        assert holder.wait(10) == -signal.SIGKILL
        deadline = time.monotonic() + 5
        while not probe.lock_released(token):  # the server notices the closed socket
            assert time.monotonic() < deadline, "the lock outlived its process"
            time.sleep(0.05)
    finally:
        holder.kill()


def test_the_lease_is_renewed_while_the_owner_lives_and_ended_when_it_finishes(
    engine: Engine, localstripe: LocalStripe, tmp_path: Path
) -> None:
    load(engine, many_clients(1, 1), tmp_path, localstripe.url)
    run_night(engine.url.render_as_string(hide_password=False), _payments(localstripe), FIRST_NIGHT)
    with engine.begin() as conn:
        conn.execute(update(m.AutopayAttempt.__table__).values(status="pending"))
    with ClaimOwner(engine, "run-lease", timedelta(seconds=0.4)) as owner:
        with engine.begin() as conn:
            conn.execute(
                update(m.AutopayAttempt.__table__).values(
                    owner=owner.token, lease_expires_at=datetime.now(UTC)
                )
            )
        time.sleep(0.5)  # a few renewals
        assert _lease(engine) > datetime.now(UTC)
    assert _lease(engine) <= datetime.now(UTC)  # let go: the next run settles it at once


def test_a_run_dagster_marked_failed_no_longer_owns_its_claims(
    engine: Engine, database_url: str, localstripe: LocalStripe, tmp_path: Path
) -> None:
    """A hung worker still holds its lock, but run monitoring marked its run failed: the next
    run settles its attempt at once (here: found in Stripe, recorded, not charged again)."""
    load(engine, many_clients(1, 1), tmp_path, localstripe.url)
    payments = _payments(localstripe)
    run_night(database_url, payments, FIRST_NIGHT)
    instance = dg.DagsterInstance.ephemeral()
    hung = instance.add_run(DagsterRun(job_name="autopay_job", status=dg.DagsterRunStatus.STARTED))
    with ClaimOwner(engine, hung.run_id, timedelta(seconds=60)) as owner:
        _make_pending(engine, owner)
        waiting = run_night(database_url, payments, FIRST_NIGHT, instance=instance)
        assert autopay_figures(waiting)["pending_in_another_run"] == 1
        instance.report_run_failed(hung)  # what run monitoring does for a dead worker
        settled = run_night(database_url, payments, FIRST_NIGHT, instance=instance)
        assert autopay_figures(settled)["reconciled_succeeded"] == 1
    book = ledger(engine, localstripe.url)
    assert len(book.succeeded_intents()) == 1
    assert_charged_once(book)


def _first_line(child: forked.Forked, timeout: float = 60) -> str:
    """The first line the child prints (it flushes it), as soon as it is there."""
    deadline = time.monotonic() + timeout
    while "\n" not in (out := child.stdout_text()):
        assert child.poll() is None, f"the holder ended: {child.stderr_text()[-3000:]}"
        assert time.monotonic() < deadline, "the holder never printed its token"
        time.sleep(0.01)
    return out.split("\n", 1)[0].strip()


def _payments(localstripe: LocalStripe) -> Payments:
    return Payments(api_key=API_KEY, api_base=localstripe.url)


def _lease(engine: Engine) -> datetime:
    with engine.connect() as conn:
        return conn.execute(select(m.AutopayAttempt.lease_expires_at)).scalar_one()


def _make_pending(engine: Engine, owner: ClaimOwner) -> None:
    """Undo the recorded outcome, as if the owner had charged and not yet written it."""
    with engine.begin() as conn:
        conn.execute(m.Payment.__table__.delete())
        conn.execute(
            update(m.AutopayAttempt.__table__).values(
                status="pending",
                completed_at=None,
                stripe_payment_intent_id=None,
                owner=owner.token,
                lease_expires_at=owner.lease_until(),
            )
        )
        conn.execute(update(m.Bill.__table__).values(status="open", paid_at=None))
