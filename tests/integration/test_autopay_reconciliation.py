"""Finance's reconciliation: per night, Stripe's succeeded PaymentIntents carrying our metadata
against our payment rows; any drift fails the `stripe_charges_match_payments` check loudly."""

from __future__ import annotations

import logging
from datetime import date, timedelta
from pathlib import Path

import dagster as dg
import pytest
from sqlalchemy import Engine, delete, select, update

from billing_pipeline.assets.reconciliation import payment_reconciliations
from billing_pipeline.db import models as m
from billing_pipeline.db.owners import ClaimOwner
from billing_pipeline.domain.autopay import LedgerEntry, compare_ledgers
from billing_pipeline.localstripe_server import LocalStripe
from billing_pipeline.resources.database import BillingDatabase
from billing_pipeline.resources.payments import Payments
from tests.integration.autopay_harness import (
    API_KEY,
    FIRST_NIGHT,
    assert_charged_once,
    autopay_figures,
    check_evaluations,
    ledger,
    load,
    many_clients,
    run_night,
)

pytestmark = pytest.mark.slow  # real servers and Dagster runs: not for the fast tier

N1, N2 = FIRST_NIGHT, FIRST_NIGHT + timedelta(days=1)
CHECK = ("payment_reconciliations", "stripe_charges_match_payments")


def pi(pi: str, attempt: str, cents: int = 100, night: date = N1) -> LedgerEntry:
    return LedgerEntry(pi, attempt, night, cents)


@pytest.mark.parametrize(
    ("stripe", "ours", "drift"),
    [
        ([], [], {}),
        ([pi("pi_1", "1")], [pi("pi_1", "1")], {}),
        ([pi("pi_1", "1"), pi("pi_2", "2")], [pi("pi_1", "1")], {"unknown_charges": ("pi_2",)}),
        ([pi("pi_1", "1")], [pi("pi_1", "1"), pi("pi_2", "2")], {"missing_in_stripe": ("pi_2",)}),
        ([pi("pi_1", "1", 100)], [pi("pi_1", "1", 90)], {"amount_mismatches": ("pi_1",)}),
        (
            [pi("pi_1", "1"), pi("pi_9", "1")],
            [pi("pi_1", "1")],
            {"unknown_charges": ("pi_9",), "charged_twice": ("1",)},
        ),
    ],
)
def test_compare_ledgers(
    stripe: list[LedgerEntry], ours: list[LedgerEntry], drift: dict[str, tuple[str, ...]]
) -> None:
    got = compare_ledgers(stripe, ours)
    assert got.clean is (not drift)
    for key in ("unknown_charges", "missing_in_stripe", "amount_mismatches", "charged_twice"):
        assert getattr(got, key) == drift.get(key, ())


def test_drift_rows_carry_both_sides_figures() -> None:
    got = compare_ledgers(
        [pi("pi_1", "1", 100), pi("pi_2", "2", 50)], [pi("pi_1", "1", 90), pi("pi_3", "3", 70)]
    )
    assert {
        (r.kind, r.payment_intent_id, r.stripe_amount_cents, r.our_amount_cents) for r in got.rows
    } == {
        ("amount_mismatch", "pi_1", 100, 90),
        ("unknown_charge", "pi_2", 50, None),
        ("missing_in_stripe", "pi_3", None, 70),
    }


def _drift(result) -> dict:
    evaluation = check_evaluations(result)[CHECK]
    return {"passed": evaluation.passed, **evaluation.metadata["drift"].value}


def test_clean_nights_pass_and_every_kind_of_drift_is_reported(
    engine: Engine, database_url: str, localstripe: LocalStripe, tmp_path: Path
) -> None:
    load(engine, many_clients(3, 2), tmp_path, localstripe.url)
    payments = Payments(api_key=API_KEY, api_base=localstripe.url)
    result = run_night(database_url, payments, N1, with_reconciliation=True)
    assert _drift(result) == {"passed": True}
    mat = result.asset_materializations_for_node("payment_reconciliations")[0]
    assert mat.metadata["nights_with_drift"].value == 0
    with engine.connect() as conn:
        assert not conn.execute(select(m.PaymentReconciliation.id)).all()  # no row: agrees

    book = ledger(engine, localstripe.url)
    first, second, third = book.attempts_with("succeeded")
    # A charge we do not know: the same attempt charged again in Stripe behind our back.
    stray = payments._stripe().v1.payment_intents.create(
        params={
            "amount": first.amount_cents,
            "currency": "usd",
            "customer": next(
                i.customer for i in book.intents if i.metadata["attempt_id"] == str(first.id)
            ),
            "payment_method": _stripe_pm(engine, first.payment_method_id),
            "confirm": True,
            "off_session": True,
            "metadata": {
                "attempt_id": str(first.id),
                "idempotency_key": first.idempotency_key,
                "client_id": first.client_id,
                "account_id": "acct-ap",
                "night": N1.isoformat(),
            },
        }
    )
    with engine.begin() as conn:
        # A payment Stripe does not have, and an amount that differs from Stripe's.
        conn.execute(
            update(m.Payment.__table__)
            .where(m.Payment.attempt_id == second.id)
            .values(stripe_payment_intent_id="pi_we_made_up")
        )
        conn.execute(
            update(m.Payment.__table__)
            .where(m.Payment.attempt_id == third.id)
            .values(amount_cents=third.amount_cents + 1)
        )
    instance = dg.DagsterInstance.ephemeral()
    # Drift fails the run (after the figures are recorded).
    drifted = run_night(
        database_url,
        payments,
        N1,
        with_reconciliation=True,
        instance=instance,
        expect_failure=CHECK,
    )
    report = _drift(drifted)[N1.isoformat()]
    assert not _drift(drifted)["passed"]
    assert report["unknown_charges"] == sorted([stray.id, second.stripe_payment_intent_id])
    assert report["missing_in_stripe"] == ["pi_we_made_up"]
    assert report["amount_mismatches"] == [third.stripe_payment_intent_id]
    assert report["charged_twice_attempt_ids"] == [str(first.id)]
    # Finance's table: one row per PaymentIntent that disagrees, with both sides' figures.
    with engine.connect() as conn:
        table = {
            (r.kind, r.payment_intent_id): (r.stripe_amount_cents, r.our_amount_cents)
            for r in conn.execute(select(m.PaymentReconciliation)).all()
            if r.night == N1
        }
    assert table[("amount_mismatch", third.stripe_payment_intent_id)] == (
        third.amount_cents,
        third.amount_cents + 1,
    )
    assert table[("missing_in_stripe", "pi_we_made_up")] == (None, second.amount_cents)
    assert table[("unknown_charge", stray.id)] == (first.amount_cents, None)
    assert ("charged_twice", stray.id) in table
    # Loud: an error in the run's log, with ids only.
    (error,) = [
        e.user_message
        for e in instance.all_logs(drifted.run_id)
        if e.level == logging.ERROR and "disagree" in e.user_message
    ]
    assert f"Stripe and our payments disagree for night {N1}" in error
    assert stray.id in error and "Test" not in error
    # Another night is not polluted by this one's drift.
    other = run_night(database_url, payments, N2, with_reconciliation=True)
    assert _drift(other) == {"passed": True}


def _stripe_pm(engine: Engine, payment_method_id: str) -> str:
    with engine.connect() as conn:
        return conn.execute(
            select(m.PaymentMethod.stripe_payment_method_id).where(
                m.PaymentMethod.id == payment_method_id
            )
        ).scalar_one()


def test_a_charge_whose_outcome_was_never_written_is_drift_until_reconciled(
    engine: Engine, database_url: str, localstripe: LocalStripe, tmp_path: Path
) -> None:
    """What a crash after Stripe's success leaves (the state the crash tests make with a real
    SIGKILL): Stripe charged, our attempt is pending with no payment. While its owner lives,
    it is in flight: AutoPay leaves it alone and finance sees no false alarm. Once the owner
    is gone, finance sees the drift, and AutoPay's next run records the charge at once without
    charging again."""
    load(engine, many_clients(2, 1), tmp_path, localstripe.url)
    payments = Payments(api_key=API_KEY, api_base=localstripe.url)
    run_night(database_url, payments, N1)
    book = ledger(engine, localstripe.url)
    lost = book.attempts_with("succeeded")[0]
    live = ClaimOwner(engine, "another-run", timedelta(seconds=60))
    with live:
        with engine.begin() as conn:
            conn.execute(delete(m.Payment.__table__).where(m.Payment.attempt_id == lost.id))
            conn.execute(
                update(m.AutopayAttempt.__table__)
                .where(m.AutopayAttempt.id == lost.id)
                .values(
                    status="pending",
                    stripe_payment_intent_id=None,
                    completed_at=None,
                    owner=live.token,
                    lease_expires_at=live.lease_until(),
                )
            )
            conn.execute(
                update(m.Bill.__table__)
                .where(m.Bill.id.in_(book.covered[lost.id]))
                .values(status="open", paid_at=None)
            )
        waiting = run_night(database_url, payments, N1, with_reconciliation=True)
        assert autopay_figures(waiting)["pending_in_another_run"] == 1
        assert _drift(waiting) == {"passed": True}  # in flight: no false alarm
    # The owner is gone (its lock and lease ended with it): finance's reconciliation alone
    # sees a charge we do not know...
    alone = dg.materialize(
        [payment_reconciliations],
        partition_key=N1.isoformat(),
        resources={"db": BillingDatabase(url=database_url), "payments": payments},
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
    )
    assert not alone.success
    assert _drift(alone)[N1.isoformat()]["unknown_charges"] == [
        i.id for i in book.succeeded_intents() if i.metadata["attempt_id"] == str(lost.id)
    ]
    # ...and the next AutoPay run settles it at once: found in Stripe, recorded, not resent.
    settled = run_night(database_url, payments, N1, with_reconciliation=True)
    assert autopay_figures(settled)["reconciled_succeeded"] == 1
    assert _drift(settled) == {"passed": True}
    after = ledger(engine, localstripe.url)
    assert len(after.succeeded_intents()) == 2
    assert_charged_once(after)
