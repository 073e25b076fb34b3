"""A bill due after its night's AutoPay is never shared before that AutoPay ran."""

from __future__ import annotations

import warnings
from datetime import timedelta

import dagster as dg
import pytest
from sqlalchemy import select, update

from billing_pipeline.assets.autopay import autopay_attempts
from billing_pipeline.assets.billing import bills
from billing_pipeline.assets.chain import chain_through
from billing_pipeline.assets.delivery import delivery_queue
from billing_pipeline.db import autopay as records
from billing_pipeline.db import models as m
from billing_pipeline.db.deliveries import due_deliveries
from billing_pipeline.db.owners import ClaimOwner
from billing_pipeline.domain.autopay import Outcome, idempotency_key
from billing_pipeline.jobs import deliver_documents_job
from billing_pipeline.resources.clock import Clock
from billing_pipeline.resources.database import BillingDatabase
from billing_pipeline.resources.notifier import Notifier
from billing_pipeline.resources.payments import Payments
from billing_pipeline.resources.renderer import DocumentRenderer
from billing_pipeline.scenario.load import load_scenario
from tests.conftest import CONTRACT

pytestmark = pytest.mark.slow  # real servers and Dagster runs: not for the fast tier

warnings.filterwarnings("ignore", message=".*is currently in beta.*")
NIGHT = "2026-10-20"
ZERO = timedelta(0)


def _materialize(assets, resources, instance):
    result = dg.materialize(assets, partition_key=NIGHT, resources=resources, instance=instance)
    assert result.success


def test_bill_waits_for_autopay_then_is_released(engine, database_url, localstripe) -> None:
    payments = Payments(api_key="sk_test_x", api_base=localstripe.url)
    load_scenario(CONTRACT / "scenarios" / "daily_autopay.json", engine, payments)
    clock = Clock(mode="logical", until_date="2026-10-23")
    resources = {"db": BillingDatabase(url=database_url), "clock": clock, "payments": payments}
    instance = dg.DagsterInstance.ephemeral()

    _materialize(chain_through(bills), resources, instance)
    # The queue step without the night's AutoPay (it failed or never ran): the bill stays held.
    _materialize([delivery_queue], resources, instance)
    with engine.connect() as conn:
        (held,) = conn.execute(select(m.Delivery.wait_for_autopay)).one()
        assert held is True
        assert due_deliveries(conn, clock.now_for) == []

    _materialize([autopay_attempts, delivery_queue], resources, instance)
    with engine.connect() as conn:
        (held,) = conn.execute(select(m.Delivery.wait_for_autopay)).one()
        assert held is False
        due = due_deliveries(conn, clock.now_for)
        assert [d.document_type for d in due] == ["bill"]
        (status,) = conn.execute(select(m.Bill.status)).one()
        assert status == "paid"


def test_a_bill_waits_for_its_attempt_in_flight_then_goes_as_it_stands_and_again_once_paid(
    engine, database_url, localstripe
) -> None:
    """Issue 15: "deliver after AutoPay" means after its outcome. A bill whose attempt is in
    flight is not shared; past the wait limit it goes out as it stands (open), and once the
    attempt pays it, it is shared again as paid: the client's copy is not wrong for long."""
    payments = Payments(api_key="sk_test_x", api_base=localstripe.url)
    load_scenario(CONTRACT / "scenarios" / "daily_autopay.json", engine, payments)
    clock = Clock(mode="logical", until_date="2026-10-23")
    db = BillingDatabase(url=database_url)
    resources = {"db": db, "clock": clock, "payments": payments}
    instance = dg.DagsterInstance.ephemeral()
    _materialize(chain_through(bills), resources, instance)
    with engine.begin() as conn:
        bill = conn.execute(select(m.Bill.__table__).order_by(m.Bill.id)).first()
        card = conn.execute(
            select(m.Client.payment_method_id).where(m.Client.id == bill.client_id)
        ).scalar_one()
        # As if the night's AutoPay step ran for the practice but this charge is in flight.
        conn.execute(update(m.Delivery.__table__).values(wait_for_autopay=False))

    def deliver(wait_minutes: int) -> int:
        result = deliver_documents_job.execute_in_process(
            instance=instance,
            resources={
                "db": db,
                "clock": clock,
                "notifier": Notifier(outcome_wait_minutes=wait_minutes),
                "renderer": DocumentRenderer(),
            },
        )
        assert result.success
        return int(result.output_for_node("share_due_documents"))

    def shares_of_bill() -> list[tuple[int, str]]:
        with engine.connect() as conn:
            return [
                (r.revision, r.bill_status)
                for r in conn.execute(
                    select(m.PortalShare.revision, m.PortalShare.bill_status)
                    .where(m.PortalShare.document_type == "bill")
                    .where(m.PortalShare.document_id == bill.id)
                    .order_by(m.PortalShare.revision)
                )
            ]

    with ClaimOwner(engine, "run-in-flight", timedelta(minutes=1)) as owner:
        with engine.begin() as conn:
            attempt = records.claim_attempt(
                conn,
                key=idempotency_key(bill.client_id, card, bill.night),
                account_id=bill.account_id,
                client_id=bill.client_id,
                night=bill.night,
                payer="client",
                payer_id=bill.client_id,
                payment_method_id=card,
                bills=[records.OpenBill(bill.id, bill.amount_cents)],
                attempted_at=bill.created_at,
                owner=owner.token,
                lease_expires_at=owner.lease_until(),
            )
        assert isinstance(attempt, records.ClaimedAttempt)
        with engine.connect() as conn:
            held = {d.document_id for d in due_deliveries(conn, clock.now_for)}
            assert bill.id not in held  # in flight: it waits
            assert bill.id in {
                d.document_id for d in due_deliveries(conn, clock.now_for, outcome_wait=ZERO)
            }
        deliver(360)
        assert shares_of_bill() == []
        deliver(0)  # the wait is over: it goes out as it stands
        assert shares_of_bill() == [(0, "open")]
        with engine.connect() as conn:
            (before,) = conn.execute(
                select(m.Delivery.shared_before_outcome).where(
                    m.Delivery.document_type == "bill", m.Delivery.document_id == bill.id
                )
            ).one()
        assert before is True
        with engine.begin() as conn:
            assert records.record_outcome(
                conn,
                attempt.id,
                Outcome.SUCCEEDED,
                payment_intent_id="pi_hold_test",
                failure_code=None,
                at=bill.created_at,
            )
    assert deliver(360) == 0  # nothing new is due; the bill is shared again, now paid
    assert shares_of_bill() == [(0, "open"), (1, "paid")]
    deliver(360)
    assert shares_of_bill() == [(0, "open"), (1, "paid")]  # once


def test_a_bill_held_for_autopay_is_shared_once_autopay_ran_even_if_the_queue_step_did_not(
    engine, database_url, localstripe
) -> None:
    """AutoPay ran (its step is recorded) but delivery_queue did not (a failed run skipped it):
    the bill is still shared, as paid, and the report no longer says it waits."""
    payments = Payments(api_key="sk_test_x", api_base=localstripe.url)
    load_scenario(CONTRACT / "scenarios" / "daily_autopay.json", engine, payments)
    clock = Clock(mode="logical", until_date="2026-10-23")
    db = BillingDatabase(url=database_url)
    resources = {"db": db, "clock": clock, "payments": payments}
    instance = dg.DagsterInstance.ephemeral()
    _materialize(chain_through(bills), resources, instance)
    with engine.connect() as conn:
        assert "delivery_waiting_for_autopay" in _warning_codes(conn)
        assert due_deliveries(conn, clock.now_for) == []
    _materialize([autopay_attempts], resources, instance)
    shared = deliver_documents_job.execute_in_process(
        instance=instance,
        resources={
            "db": db,
            "clock": clock,
            "notifier": Notifier(),
            "renderer": DocumentRenderer(),
        },
    )
    assert shared.output_for_node("share_due_documents") == 1
    with engine.connect() as conn:
        (held, status) = conn.execute(
            select(m.Delivery.wait_for_autopay, m.Delivery.bill_status_at_delivery)
        ).one()
        assert held is True and status == "paid"  # the queue step never ran; AutoPay did
        assert "delivery_waiting_for_autopay" not in _warning_codes(conn)


def _warning_codes(conn) -> list[str]:
    from billing_pipeline.db.report import build_report

    return [w["code"] for w in build_report(conn)["warnings"]]
