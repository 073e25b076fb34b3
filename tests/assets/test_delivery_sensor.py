"""The `deliver_due_documents` sensor, evaluated through Dagster's sensor test context on a
public scenario whose night is built by the real assets (logical clock)."""

from __future__ import annotations

import io
from datetime import datetime
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.events import PIPELINE_RUN_STATUS_TO_EVENT_TYPE, DagsterEvent
from dagster._core.remote_origin import (
    InProcessCodeLocationOrigin,
    RemoteJobOrigin,
    RemoteRepositoryOrigin,
)
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster._core.utils import make_new_run_id
from pypdf import PdfReader
from sqlalchemy import Engine, select

from billing_pipeline.assets.autopay import autopay_attempts
from billing_pipeline.assets.billing import bills
from billing_pipeline.assets.chain import chain_through
from billing_pipeline.assets.delivery import delivery_queue
from billing_pipeline.db import models as m
from billing_pipeline.jobs import deliver_documents_job
from billing_pipeline.localstripe_server import LocalStripe
from billing_pipeline.partitions import DATABASE_TAG
from billing_pipeline.resources.clock import Clock
from billing_pipeline.resources.database import BillingDatabase
from billing_pipeline.resources.notifier import Notifier
from billing_pipeline.resources.payments import Payments
from billing_pipeline.resources.renderer import DocumentRenderer
from billing_pipeline.scenario.load import load_scenario
from billing_pipeline.schedules import deliver_due_documents
from tests.conftest import CONTRACT

SCENARIO = CONTRACT / "scenarios" / "daily_autopay.json"
ASSETS = chain_through(delivery_queue)
NIGHT = "2026-10-20"
# Ana's bill for 10-20 is made at 00:00 on 10-21 in Los Angeles (07:00Z), AutoPay runs at
# 07:30Z and her 60-minute sharing delay makes the bill due at 08:00Z.
DUE = "2026-10-21T08:00:00+00:00"


def sense(
    instance: dg.DagsterInstance, db: BillingDatabase, until: str
) -> dg.RunRequest | dg.SkipReason:
    with dg.build_sensor_context(
        instance=instance,
        resources={
            "db": db,
            "clock": Clock(mode="logical", until_date=until),
            "notifier": Notifier(),
        },
    ) as context:
        return deliver_due_documents(context)  # type: ignore[return-value]  # a sensor's result is typed as any of its forms; this one returns a RunRequest or a SkipReason


def materialize(
    selection: list[dg.AssetsDefinition],
    db: BillingDatabase,
    payments: Payments,
    instance: dg.DagsterInstance,
) -> None:
    result = dg.materialize(
        ASSETS,
        selection=selection,
        partition_key=NIGHT,
        instance=instance,
        resources={
            "db": db,
            "clock": Clock(mode="logical", until_date="2026-10-22"),
            "payments": payments,
            "notifier": Notifier(),
        },
    )
    assert result.success


def deliveries(engine: Engine) -> list[dict[str, object]]:
    with engine.connect() as conn:
        return [
            dict(r._mapping)
            for r in conn.execute(select(m.Delivery.__table__).order_by(m.Delivery.id))
        ]


@pytest.fixture
def world(engine: Engine, localstripe: LocalStripe):
    payments = Payments(api_key="sk_test_x", api_base=localstripe.url)
    load_scenario(Path(SCENARIO), engine, payments)
    db = BillingDatabase(url=engine.url.render_as_string(hide_password=False))
    instance = dg.DagsterInstance.ephemeral()
    return db, payments, instance, engine


@pytest.mark.slow
def test_sensor_follows_a_night_from_nothing_due_to_delivered(world) -> None:
    db, payments, instance, engine = world

    # Nothing made yet.
    skip = sense(instance, db, "2026-10-22")
    assert isinstance(skip, dg.SkipReason)
    assert skip.skip_message == "nothing is due"

    # 00:00: the bill is made and its delivery queued, held for AutoPay (07:30Z < 08:00Z).
    materialize(chain_through(bills), db, payments, instance)
    [held] = deliveries(engine)
    assert held["document_type"] == "bill"
    assert held["client_id"] == "cl-ana"
    assert held["wait_for_autopay"] is True
    assert held["delivered_at"] is None
    assert held["scheduled_at"] == datetime.fromisoformat(DUE)
    # Its time has long come on this clock, but AutoPay has not run: no run.
    skip = sense(instance, db, "2026-10-22")
    assert isinstance(skip, dg.SkipReason), skip
    assert skip.skip_message == "nothing is due"

    # 00:30: AutoPay charges and the delivery queue releases the bill.
    materialize([autopay_attempts, delivery_queue], db, payments, instance)
    [released] = deliveries(engine)
    assert released["wait_for_autopay"] is False

    # Not due yet at 00:00 on 10-21 in Los Angeles (07:00Z).
    skip = sense(instance, db, "2026-10-21")
    assert isinstance(skip, dg.SkipReason)
    assert skip.skip_message == "nothing is due"

    # Due by 00:00 on 10-22.
    request = sense(instance, db, "2026-10-22")
    assert isinstance(request, dg.RunRequest), request
    assert request.tags == {"billing/first_due": DUE, DATABASE_TAG: db.fingerprint()}

    # The run the sensor asks for shares it, once, as paid; then nothing is due.
    run = deliver_documents_job.execute_in_process(
        instance=instance,
        resources={
            "db": db,
            "clock": Clock(mode="logical", until_date="2026-10-22"),
            "notifier": Notifier(),
            "renderer": DocumentRenderer(),
        },
        tags=request.tags,
    )
    assert run.success
    assert run.output_for_node("share_due_documents") == 1
    [done] = deliveries(engine)
    assert done["delivered_at"] == datetime.fromisoformat(DUE)
    assert done["bill_status_at_delivery"] == "paid"
    # The PDF shared is the bill as it stood at delivery: AutoPay had paid it.
    with engine.connect() as conn:
        pdf = conn.execute(
            select(m.DocumentFile.content).join(
                m.PortalShare, m.PortalShare.content_sha256 == m.DocumentFile.sha256
            )
        ).scalar_one()
    text = PdfReader(io.BytesIO(pdf)).pages[0].extract_text()
    assert "PAID" in text and "Balance due $0.00" in text
    skip = sense(instance, db, "2026-10-30")
    assert isinstance(skip, dg.SkipReason)
    assert skip.skip_message == "nothing is due"


def add_run(
    instance: dg.DagsterInstance,
    job_name: str,
    status: dg.DagsterRunStatus,
    tags: dict[str, str] | None = None,
) -> None:
    """A run of `job_name` brought to `status` by the run events Dagster itself records."""
    origin = RemoteJobOrigin(
        repository_origin=RemoteRepositoryOrigin(
            code_location_origin=InProcessCodeLocationOrigin(
                LoadableTargetOrigin(module_name="billing_pipeline.definitions")
            ),
            repository_name="__repository__",
        ),
        job_name=job_name,
    )
    run = instance.add_run(
        dg.DagsterRun(
            job_name=job_name,
            run_id=make_new_run_id(),
            status=dg.DagsterRunStatus.NOT_STARTED,
            remote_job_origin=origin,
            tags=tags or {},
        )
    )
    if status != dg.DagsterRunStatus.NOT_STARTED:
        instance.report_dagster_event(
            DagsterEvent(
                event_type_value=PIPELINE_RUN_STATUS_TO_EVENT_TYPE[status].value,
                job_name=job_name,
            ),
            run.run_id,
        )
    stored = instance.get_run_by_id(run.run_id)
    assert stored is not None and stored.status == status


IN_FLIGHT = {
    dg.DagsterRunStatus.QUEUED: True,
    dg.DagsterRunStatus.NOT_STARTED: True,
    dg.DagsterRunStatus.STARTING: True,
    dg.DagsterRunStatus.STARTED: True,
    dg.DagsterRunStatus.SUCCESS: False,
    dg.DagsterRunStatus.FAILURE: False,
    dg.DagsterRunStatus.CANCELED: False,
}


@pytest.mark.slow
def test_a_delivery_run_in_flight_holds_the_sensor(world) -> None:
    db, _payments, _instance, engine = world
    # A due delivery written straight into the table (the ORM's own columns).
    with engine.begin() as conn:
        conn.execute(
            m.Delivery.__table__.insert().values(
                document_type="bill",
                document_id=1,
                account_id="acct-sunrise",
                client_id="cl-ana",
                night=datetime.fromisoformat(NIGHT).date(),
                recipient="client",
                recipient_id="cl-ana",
                scheduled_at=datetime.fromisoformat(DUE),
                wait_for_autopay=False,
            )
        )
    for status, blocks in IN_FLIGHT.items():
        instance = dg.DagsterInstance.ephemeral()
        assert isinstance(sense(instance, db, "2026-10-22"), dg.RunRequest)
        # A run of another job in flight does not matter.
        add_run(instance, "nightly_chain_job", dg.DagsterRunStatus.STARTED)
        assert isinstance(sense(instance, db, "2026-10-22"), dg.RunRequest)
        # Nor does a delivery run for another billing database on the same instance.
        other = {DATABASE_TAG: "0123456789ab"}
        add_run(instance, deliver_documents_job.name, dg.DagsterRunStatus.STARTED, other)
        assert isinstance(sense(instance, db, "2026-10-22"), dg.RunRequest)

        add_run(instance, deliver_documents_job.name, status, {DATABASE_TAG: db.fingerprint()})
        result = sense(instance, db, "2026-10-22")
        if blocks:
            assert isinstance(result, dg.SkipReason), (status, result)
            assert result.skip_message == "a delivery run is already in flight"
        else:
            assert isinstance(result, dg.RunRequest), (status, result)
            assert result.tags == {"billing/first_due": DUE, DATABASE_TAG: db.fingerprint()}


def test_sensor_definition() -> None:
    assert deliver_due_documents.job_name == "deliver_documents_job"
    assert deliver_due_documents.minimum_interval_seconds == 60
    assert deliver_due_documents.default_status == dg.DefaultSensorStatus.RUNNING
    # The notifier's outcome wait decides when a bill held for AutoPay's outcome falls due.
    assert set(deliver_due_documents.required_resource_keys) == {"db", "clock", "notifier"}


def test_database_fingerprint_names_the_database_not_its_password() -> None:
    def print_of(url: str) -> str:
        return BillingDatabase(url=url).fingerprint()

    base = print_of("postgresql://billing:first@db.internal:5432/billing")
    assert len(base) == 12
    assert print_of("postgresql://billing:second@db.internal:5432/billing") == base
    assert print_of("postgresql://billing:first@db.internal:5432/other") != base
    assert print_of("sqlite:////tmp/a.db") != print_of("sqlite:////tmp/b.db")
