"""A bill due after its night's AutoPay is never shared before that AutoPay ran."""

from __future__ import annotations

import warnings

import dagster as dg
from sqlalchemy import select

from billing_pipeline.assets.autopay import autopay_attempts
from billing_pipeline.assets.billing import bills
from billing_pipeline.assets.delivery import delivery_queue
from billing_pipeline.assets.sessions import eligible_sessions, resolved_settings
from billing_pipeline.db import models as m
from billing_pipeline.db.deliveries import due_deliveries
from billing_pipeline.db.loader import load_scenario
from billing_pipeline.resources.clock import Clock
from billing_pipeline.resources.database import BillingDatabase
from billing_pipeline.resources.payments import Payments
from tests.conftest import CONTRACT

warnings.filterwarnings("ignore", message=".*is currently in beta.*")
NIGHT = "2026-10-20"


def _materialize(assets, resources, instance):  # type: ignore[no-untyped-def]
    result = dg.materialize(assets, partition_key=NIGHT, resources=resources, instance=instance)
    assert result.success


def test_bill_waits_for_autopay_then_is_released(engine, database_url, localstripe) -> None:
    payments = Payments(api_key="sk_test_x", api_base=localstripe.url)
    load_scenario(CONTRACT / "scenarios" / "daily_autopay.json", engine, payments)
    clock = Clock(mode="logical", until_date="2026-10-23")
    resources = {"db": BillingDatabase(url=database_url), "clock": clock, "payments": payments}
    instance = dg.DagsterInstance.ephemeral()

    _materialize([eligible_sessions, resolved_settings, bills], resources, instance)
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
