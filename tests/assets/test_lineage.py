"""True lineage (issue 9): `bills` bills the rows of its night's `eligible_sessions` partition and
AutoPay charges by the rows of its `resolved_settings` partition, not a recomputation of
eligibility or of AutoPay's gates, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import date

import dagster as dg
import pytest
from sqlalchemy import Engine, and_, delete, select, update

from billing_pipeline.assets.autopay import autopay_attempts
from billing_pipeline.assets.billing import bills
from billing_pipeline.assets.chain import chain_through
from billing_pipeline.assets.sessions import eligible_sessions, resolved_settings
from billing_pipeline.db import models as m
from billing_pipeline.localstripe_server import LocalStripe
from billing_pipeline.resources.clock import Clock
from billing_pipeline.resources.database import BillingDatabase
from billing_pipeline.resources.payments import Payments
from billing_pipeline.scenario.load import load_scenario
from tests.conftest import CONTRACT

NIGHT = "2026-11-03"
CHAIN = chain_through(bills)


@pytest.fixture
def daily_autopay(engine: Engine, localstripe: LocalStripe) -> Engine:
    payments = Payments(api_key="sk_test_x", api_base=localstripe.url)
    load_scenario(CONTRACT / "scenarios" / "daily_autopay.json", engine, payments)
    return engine


def materialize(engine: Engine, selection: list[dg.AssetsDefinition]) -> dg.ExecuteInProcessResult:
    with dg.instance_for_test() as instance:
        return dg.materialize(
            CHAIN,
            selection=selection,
            partition_key=NIGHT,
            instance=instance,
            resources={
                "db": BillingDatabase(url=engine.url.render_as_string(hide_password=False)),
                "clock": Clock(mode="logical", until_date="2026-12-31"),
            },
        )


def billed(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(select(m.BillSession.session_id)).scalars())


def test_bills_bill_exactly_the_rows_of_their_eligible_sessions_partition(
    daily_autopay: Engine,
) -> None:
    engine = daily_autopay
    assert materialize(engine, [eligible_sessions, resolved_settings]).success
    with engine.connect() as conn:
        listed = set(conn.execute(select(m.EligibleSession.session_id)).scalars())
    assert listed == {"s-ana-1020", "s-ana-1102", "s-ana-1103", "s-ben-1103"}
    # Staff (or a test) edit the partition by hand: s-ana-1102 is taken out.
    with engine.begin() as conn:
        conn.execute(
            delete(m.EligibleSession).where(
                and_(
                    m.EligibleSession.night == date.fromisoformat(NIGHT),
                    m.EligibleSession.session_id == "s-ana-1102",
                )
            )
        )
    result = materialize(engine, [bills])
    assert result.success
    assert billed(engine) == {"s-ana-1020", "s-ana-1103", "s-ben-1103"}
    # Run again: nothing is billed twice, and s-ana-1102 is still not billed (not listed).
    assert materialize(engine, [bills]).success
    assert billed(engine) == {"s-ana-1020", "s-ana-1103", "s-ben-1103"}


def test_bills_make_nothing_and_stay_undone_when_the_night_was_not_listed(
    daily_autopay: Engine,
) -> None:
    """Without its eligible_sessions partition (that step failed, or never ran), the bills step
    bills nothing and is not recorded done: the catch-up sensor runs the night again."""
    engine = daily_autopay
    result = materialize(engine, [bills])
    assert result.success
    (mat,) = result.get_asset_materialization_events()
    assert mat.materialization.metadata["eligible_sessions_not_listed"].value == 1
    assert billed(engine) == set()
    with engine.connect() as conn:
        assert not conn.execute(select(m.NightStep.step)).all()


def test_autopay_charges_by_the_rows_of_its_resolved_settings_partition(
    daily_autopay: Engine, localstripe: LocalStripe
) -> None:
    """Ana's AutoPay is on and her card good, so the night's settings say AutoPay runs for
    her; with that row edited by hand to say her AutoPay is off, AutoPay does not charge her.
    Put back, the next run charges her, once."""
    engine = daily_autopay
    payments = Payments(api_key="sk_test_x", api_base=localstripe.url)
    chain = chain_through(autopay_attempts)
    url = engine.url.render_as_string(hide_password=False)

    def run(selection: list[dg.AssetsDefinition]) -> dg.ExecuteInProcessResult:
        with dg.instance_for_test() as instance:
            return dg.materialize(
                chain,
                selection=selection,
                partition_key=NIGHT,
                instance=instance,
                resources={
                    "db": BillingDatabase(url=url),
                    "clock": Clock(mode="logical", until_date="2026-12-31"),
                    "payments": payments,
                },
            )

    def attempts() -> list[tuple[str, str]]:
        with engine.connect() as conn:
            return [
                (r.client_id, r.status)
                for r in conn.execute(select(m.AutopayAttempt.client_id, m.AutopayAttempt.status))
            ]

    def set_runs(runs: bool, reason: str) -> None:
        with engine.begin() as conn:
            conn.execute(
                update(m.ResolvedSettings)
                .where(
                    and_(
                        m.ResolvedSettings.night == date.fromisoformat(NIGHT),
                        m.ResolvedSettings.client_id == "cl-ana",
                    )
                )
                .values(autopay_runs=runs, autopay_reason=reason)
            )

    assert run([eligible_sessions, resolved_settings, bills]).success
    with engine.connect() as conn:
        row = conn.execute(
            select(m.ResolvedSettings).where(m.ResolvedSettings.client_id == "cl-ana")
        ).one()
    assert row.autopay_runs and row.payer == "client" and row.payer_id == "cl-ana"
    set_runs(False, "client_autopay_off")
    result = run([autopay_attempts])
    assert result.success
    assert attempts() == []
    mat = next(
        e.materialization
        for e in result.get_asset_materialization_events()
        if e.materialization.asset_key.to_user_string() == "autopay_attempts"
    )
    assert mat.metadata["attempts"].value == 0

    # The night is recorded done: put back, the row is read by a backfill of the night.
    with engine.begin() as conn:
        conn.execute(
            delete(m.NightStep).where(
                and_(m.NightStep.step == "autopay", m.NightStep.account_id == "acct-sunrise")
            )
        )
    set_runs(True, "runs")
    assert run([autopay_attempts]).success
    assert attempts() == [("cl-ana", "succeeded")]
