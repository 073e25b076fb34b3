"""Checks per partition (issue 9): each SQL check looks at the nights its run made. A failing row
of another night does not fail it; a failing row of its own nights does. On SQLite and
PostgreSQL, with the rows of daily_autopay's nights of Nov 2 and 3 (each made by its own run)."""

from __future__ import annotations

from datetime import date, timedelta

import dagster as dg
import pytest
from sqlalchemy import Engine, and_, insert, select, update

from billing_pipeline.assets.chain import chain_through
from billing_pipeline.assets.delivery import delivery_queue
from billing_pipeline.assets.sessions import eligible_sessions
from billing_pipeline.checks.invariants import (
    bill_totals_match_lines,
    deliveries_never_early,
    no_bill_paid_twice,
)
from billing_pipeline.db import models as m
from billing_pipeline.localstripe_server import LocalStripe
from billing_pipeline.resources.clock import Clock
from billing_pipeline.resources.database import BillingDatabase
from billing_pipeline.resources.payments import Payments
from billing_pipeline.scenario.load import load_scenario
from tests.conftest import CONTRACT

NOV2, NOV3, NOV4 = date(2026, 11, 2), date(2026, 11, 3), date(2026, 11, 4)
CHAIN = chain_through(delivery_queue)


def materialize(
    engine: Engine, payments: Payments, night: date, selection: list[dg.AssetsDefinition]
) -> dg.ExecuteInProcessResult:
    with dg.instance_for_test() as instance:
        return dg.materialize(
            CHAIN,
            selection=selection,
            partition_key=night.isoformat(),
            instance=instance,
            resources={
                "db": BillingDatabase(url=engine.url.render_as_string(hide_password=False)),
                "clock": Clock(mode="logical", until_date="2026-12-31"),
                "payments": payments,
            },
            raise_on_error=False,
        )


@pytest.fixture
def two_nights(engine: Engine, localstripe: LocalStripe) -> tuple[Engine, Payments]:
    payments = Payments(api_key="sk_test_x", api_base=localstripe.url)
    load_scenario(CONTRACT / "scenarios" / "daily_autopay.json", engine, payments)
    for night in (NOV2, NOV3):
        assert materialize(engine, payments, night, CHAIN).success
    return engine, payments


def one_of(engine: Engine, model: type[m.Base], night: date) -> int:
    with engine.connect() as conn:
        return (
            conn.execute(
                select(model.id).where(model.night == night).order_by(model.id)  # type: ignore[attr-defined]  # Bill and Delivery both have id and night
            )
            .scalars()
            .first()
        )


def test_each_check_passes_on_its_nights_and_fails_only_on_the_nights_with_the_bad_row(
    two_nights: tuple[Engine, Payments],
) -> None:
    engine, _ = two_nights
    with engine.connect() as conn:
        for check in (bill_totals_match_lines, no_bill_paid_twice, deliveries_never_early):
            assert check(conn, [NOV2, NOV3]).passed, check.__name__

    # A bill of Nov 2 whose amount no longer matches its lines.
    bill = one_of(engine, m.Bill, NOV2)
    with engine.begin() as conn:
        conn.execute(
            update(m.Bill).where(m.Bill.id == bill).values(amount_cents=m.Bill.amount_cents + 1)
        )
    # A delivery of Nov 2 shared a minute before its time.
    delivery = one_of(engine, m.Delivery, NOV2)
    with engine.begin() as conn:
        scheduled = conn.execute(
            select(m.Delivery.scheduled_at).where(m.Delivery.id == delivery)
        ).scalar_one()
        conn.execute(
            update(m.Delivery)
            .where(m.Delivery.id == delivery)
            .values(delivered_at=scheduled - timedelta(minutes=1))
        )
    # A bill of Nov 2 covered by Nov 2's succeeded attempt and, by a bad row, Nov 2's again
    # through a second succeeded attempt of Nov 2.
    with engine.begin() as conn:
        attempt = conn.execute(
            select(m.AutopayAttempt).where(
                and_(m.AutopayAttempt.night == NOV2, m.AutopayAttempt.status == "succeeded")
            )
        ).first()
        assert attempt is not None
        covered = (
            conn.execute(
                select(m.AutopayAttemptBill.bill_id).where(
                    m.AutopayAttemptBill.attempt_id == attempt.id
                )
            )
            .scalars()
            .first()
        )
        values = {
            c.name: getattr(attempt, c.name)
            for c in m.AutopayAttempt.__table__.columns
            if c.name not in ("id", "idempotency_key")
        }
        twin = conn.execute(
            insert(m.AutopayAttempt)
            .values(**values, idempotency_key="twin-" + attempt.idempotency_key)
            .returning(m.AutopayAttempt.id)
        ).scalar_one()
        conn.execute(insert(m.AutopayAttemptBill).values(attempt_id=twin, bill_id=covered))

    with engine.connect() as conn:
        for check in (bill_totals_match_lines, no_bill_paid_twice, deliveries_never_early):
            assert check(conn, [NOV3]).passed, check.__name__  # the bad rows are Nov 2's
            assert check(conn, [NOV4]).passed, check.__name__
            failed = check(conn, [NOV2])
            assert not failed.passed, check.__name__
            assert failed.severity == dg.AssetCheckSeverity.ERROR
        assert check(conn, [NOV2, NOV3]).metadata["early"].value == 1
        assert no_bill_paid_twice(conn, [NOV2]).metadata["bill_ids"].value == [str(covered)]


def cpt_check(result: dg.ExecuteInProcessResult) -> dg.AssetCheckEvaluation:
    (evaluation,) = [
        e
        for e in result.get_asset_check_evaluations()
        if e.check_name == "imported_sessions_have_cpt_codes"
    ]
    return evaluation


def test_the_imported_cpt_check_is_about_its_nights_and_resolves_when_codes_are_added(
    engine: Engine, localstripe: LocalStripe
) -> None:
    payments = Payments(api_key="sk_test_x", api_base=localstripe.url)
    load_scenario(CONTRACT / "scenarios" / "daily_autopay.json", engine, payments)
    # Nov 3 meets Ben's imported session of Nov 3 without a CPT code: the check warns.
    nov3 = cpt_check(materialize(engine, payments, NOV3, [eligible_sessions]))
    assert not nov3.passed and nov3.severity == dg.AssetCheckSeverity.WARN
    assert nov3.metadata["session_ids"].value == ["s-ben-imported"]
    assert nov3.metadata["open_overall"].value == 1
    # Nov 2 does not meet it (it is dated Nov 3): the flag of another night does not fail it.
    nov2 = cpt_check(materialize(engine, payments, NOV2, [eligible_sessions]))
    assert nov2.passed and nov2.metadata["open_overall"].value == 1
    # Staff add the code: the next night passes, nothing is open, the session is eligible.
    with engine.begin() as conn:
        conn.execute(
            update(m.SessionService)
            .where(m.SessionService.session_id == "s-ben-imported")
            .values(cpt="90834")
        )
    nov4 = materialize(engine, payments, NOV4, [eligible_sessions])
    assert cpt_check(nov4).passed and cpt_check(nov4).metadata["open_overall"].value == 0
    with engine.connect() as conn:
        listed = set(
            conn.execute(
                select(m.EligibleSession.session_id).where(m.EligibleSession.night == NOV4)
            ).scalars()
        )
        flags = set(conn.execute(select(m.CheckFlag.session_id)).scalars())
    assert "s-ben-imported" in listed
    assert flags == {"s-ben-imported"}  # the flag stays in the record (the report lists it)
