"""The Great Expectations suites (checks/suites.py) on daily_autopay's nights, on SQLite and
PostgreSQL: each passes on the rows the chain made, and fails naming the ids of a deliberately
corrupted row (ids only). The bills' suite is blocking: with a bill whose total disagrees with
its lines, AutoPay does not run for that night and nobody is charged."""

from __future__ import annotations

import json
from datetime import date, timedelta

import dagster as dg
import pytest
from sqlalchemy import Engine, and_, func, select, update

from billing_pipeline.assets.autopay import autopay_attempts
from billing_pipeline.assets.chain import AT_MIDNIGHT, chain_through
from billing_pipeline.assets.delivery import delivery_queue
from billing_pipeline.assets.finance import finance_daily
from billing_pipeline.checks import expectations
from billing_pipeline.checks.suites import (
    EXPECTATION_CHECKS,
    bill_delay_leaves_time_for_autopay,
    bills_meet_expectations,
)
from billing_pipeline.db import models as m
from billing_pipeline.definitions import defs
from billing_pipeline.localstripe_server import LocalStripe
from billing_pipeline.resources.clock import Clock
from billing_pipeline.resources.database import BillingDatabase
from billing_pipeline.resources.payments import Payments
from billing_pipeline.scenario.load import load_scenario
from tests.conftest import CONTRACT

NOV2, NOV3 = date(2026, 11, 2), date(2026, 11, 3)
CHAIN = chain_through(delivery_queue)
CHECK_NAMES = {spec.name for c in EXPECTATION_CHECKS for spec in c.check_specs}


def run(
    engine: Engine, payments: Payments, night: date, selection: dg.AssetSelection
) -> dg.ExecuteInProcessResult:
    # A run of checks alone has no partitions definition of its own: it gets the night's tag,
    # as a run of the job would.
    assets_too = bool(selection.resolve([*CHAIN, finance_daily]))
    with dg.instance_for_test() as instance:
        return dg.materialize(
            [*CHAIN, finance_daily, *EXPECTATION_CHECKS],
            selection=selection,
            partition_key=night.isoformat() if assets_too else None,
            tags=None if assets_too else {"dagster/partition": night.isoformat()},
            instance=instance,
            resources={
                "db": BillingDatabase(url=engine.url.render_as_string(hide_password=False)),
                "clock": Clock(mode="logical", until_date="2026-12-31"),
                "payments": payments,
            },
            raise_on_error=False,
        )


def checks_of(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {
        e.check_name: e for e in result.get_asset_check_evaluations() if e.check_name in CHECK_NAMES
    }


def failing(evaluation: dg.AssetCheckEvaluation) -> dict[str, list[str]]:
    value = evaluation.metadata["failing_ids"].value
    assert isinstance(value, dict)
    return value


ONLY_CHECKS = dg.AssetSelection.checks(*EXPECTATION_CHECKS)


@pytest.fixture
def night_made(engine: Engine, localstripe: LocalStripe) -> tuple[Engine, Payments]:
    payments = Payments(api_key="sk_test_x", api_base=localstripe.url)
    load_scenario(CONTRACT / "scenarios" / "daily_autopay.json", engine, payments)
    done = run(
        engine, payments, NOV2, dg.AssetSelection.assets(*CHAIN, finance_daily) | ONLY_CHECKS
    )
    assert done.success
    # Finance's figures of the night are stored (on PostgreSQL, as the service role under the
    # practice isolation of migration 0008).
    with engine.connect() as conn:
        stored = conn.execute(
            select(m.FinanceDaily.bills, m.FinanceDaily.bills_cents).where(
                m.FinanceDaily.night == NOV2
            )
        ).all()
        made = conn.execute(
            select(func.count(), func.sum(m.Bill.amount_cents)).where(m.Bill.night == NOV2)
        ).one()
    assert [tuple(r) for r in stored] == [tuple(made)]
    evaluations = checks_of(done)
    assert set(evaluations) == CHECK_NAMES
    for name, evaluation in evaluations.items():
        assert evaluation.passed, (name, evaluation.metadata)
        assert failing(evaluation) == {}, name
    return engine, payments


def test_each_suite_names_the_ids_of_a_corrupted_row_and_the_bills_suite_blocks_autopay(
    night_made: tuple[Engine, Payments],
) -> None:
    engine, payments = night_made
    with engine.begin() as conn:
        bill = conn.execute(select(func.min(m.Bill.id)).where(m.Bill.night == NOV2)).scalar_one()
        conn.execute(update(m.Bill).where(m.Bill.id == bill).values(amount_cents=0))
        attempt = conn.execute(
            select(func.min(m.AutopayAttempt.id)).where(m.AutopayAttempt.night == NOV2)
        ).scalar_one()
        # Charged $10 more than the bills it covers, and declined without a code.
        conn.execute(
            update(m.AutopayAttempt)
            .where(m.AutopayAttempt.id == attempt)
            .values(
                amount_cents=m.AutopayAttempt.amount_cents + 1000,
                status="declined",
                failure_code=None,
            )
        )
        delivery, made = conn.execute(
            select(m.Delivery.id, m.Bill.created_at)
            .join(
                m.Bill,
                and_(m.Delivery.document_type == "bill", m.Delivery.document_id == m.Bill.id),
            )
            .where(m.Delivery.night == NOV2)
            .order_by(m.Delivery.id)
        ).first()
        conn.execute(
            update(m.Delivery)
            .where(m.Delivery.id == delivery)
            .values(scheduled_at=made - timedelta(minutes=1))
        )
        client = (
            conn.execute(
                select(m.ResolvedSettings.client_id)
                .where(m.ResolvedSettings.night == NOV2, m.ResolvedSettings.autopay_runs.is_(True))
                .order_by(m.ResolvedSettings.client_id)
            )
            .scalars()
            .first()
        )
        conn.execute(
            update(m.ResolvedSettings)
            .where(m.ResolvedSettings.night == NOV2, m.ResolvedSettings.client_id == client)
            .values(bill_delay_minutes=15)
        )

    evaluations = checks_of(run(engine, payments, NOV2, ONLY_CHECKS))
    bills = evaluations["bills_meet_expectations"]
    assert not bills.passed and bills.severity == dg.AssetCheckSeverity.ERROR
    assert failing(bills) == {"bill amount equals the sum of its lines": [f"bill-{bill}"]}
    positive = evaluations["bills_are_positive"]
    assert not positive.passed and positive.severity == dg.AssetCheckSeverity.WARN
    assert failing(positive) == {"bill amount is positive": [f"bill-{bill}"]}
    attempts = evaluations["autopay_attempts_meet_expectations"]
    assert not attempts.passed
    assert failing(attempts) == {
        "amount is at most the open balance at the attempt": [f"attempt-{attempt}"],
        "every decline has a decline code": [f"attempt-{attempt}"],
    }
    deliveries = evaluations["delivery_queue_meets_expectations"]
    assert failing(deliveries) == {
        "due at or after the document was made": [f"delivery-{delivery}"]
    }
    settings = evaluations["bill_delay_leaves_time_for_autopay"]
    assert not settings.passed and settings.severity == dg.AssetCheckSeverity.WARN
    assert failing(settings) == {"bill delay at least 60 minutes with AutoPay on": [client]}
    # Ids only: no name or email of the scenario's clients in any check's metadata.
    shown = json.dumps({n: str(e.metadata) for n, e in evaluations.items()})
    for person in ("Ana", "Ben", "@"):
        assert person not in shown

    # The next night, a bill whose total disagrees with its lines: no AutoPay for that night.
    a_bill_that_disagrees_with_its_lines_stops_that_nights_autopay(engine, payments)


def a_bill_that_disagrees_with_its_lines_stops_that_nights_autopay(
    engine: Engine, payments: Payments
) -> None:
    assert run(engine, payments, NOV3, dg.AssetSelection.assets(*AT_MIDNIGHT)).success
    with engine.begin() as conn:
        bill = conn.execute(select(func.min(m.Bill.id)).where(m.Bill.night == NOV3)).scalar_one()
        assert bill is not None
        conn.execute(
            update(m.Bill).where(m.Bill.id == bill).values(amount_cents=m.Bill.amount_cents - 1)
        )
    # The 00:30 job as defined: the bills' suite, then AutoPay and what follows it.
    job = defs.resolve_job_def("autopay_job")
    assert bills_meet_expectations.check_key in job.asset_layer.asset_graph.asset_check_keys
    result = run(
        engine,
        payments,
        NOV3,
        dg.AssetSelection.assets(autopay_attempts)
        | dg.AssetSelection.checks(bills_meet_expectations),
    )
    assert not result.success
    evaluation = checks_of(result)["bills_meet_expectations"]
    assert not evaluation.passed
    assert failing(evaluation) == {"bill amount equals the sum of its lines": [f"bill-{bill}"]}
    ran = {e.step_key for e in result.all_events if e.event_type_value == "STEP_START"}
    assert "autopay_attempts" not in ran
    with engine.connect() as conn:
        attempts = conn.execute(
            select(func.count()).where(m.AutopayAttempt.night == NOV3)
        ).scalar_one()
    assert attempts == 0


def test_great_expectations_is_imported_once_per_process() -> None:
    assert expectations.gx_context() is expectations.gx_context()
    assert bill_delay_leaves_time_for_autopay.check_specs


def test_a_frame_without_rows_passes_and_a_bad_row_beside_it_still_fails() -> None:
    """No rows: nothing to fail (GX is not called for that frame); the counts say 0."""
    import pandas as pd

    from billing_pipeline.checks.suites import BILLS

    columns = ["bill_id", "amount_cents", "lines_cents", "status"]
    empty = {
        "bills": pd.DataFrame(columns=columns),
        "billed_sessions": pd.DataFrame(columns=["session_id"]),
    }
    outcome = expectations.validate("bills", empty, BILLS)
    assert outcome.passed and outcome.rows == {"bills": 0, "billed_sessions": 0}
    bad = {**empty, "bills": pd.DataFrame([[7, 100, 90, "open"]], columns=columns)}
    outcome = expectations.validate("bills", bad, BILLS)
    assert outcome.failed == {"bill amount equals the sum of its lines": ["7"]}
    assert outcome.rows == {"bills": 1, "billed_sessions": 0}


def test_only_the_failed_expectations_name_their_rows_and_each_names_all_of_its_own() -> None:
    """validate() asks GX first for pass or fail only, then names the rows of the failed
    expectations alone: two of the bills frame's four fail (on different rows), the others and
    the sessions frame's pass, and each failure lists every row it failed on, in id order."""
    import pandas as pd

    from billing_pipeline.checks.suites import BILLS

    bills = pd.DataFrame(
        [
            [10, 100, 90, "open"],  # total disagrees with its lines
            [2, 100, 100, "void"],  # unknown state
            [3, 50, 50, "paid"],
            [1, 70, 60, "paid"],  # total disagrees with its lines
        ],
        columns=["bill_id", "amount_cents", "lines_cents", "status"],
    )
    sessions = pd.DataFrame({"session_id": ["s-1", "s-2"]})
    outcome = expectations.validate("bills", {"bills": bills, "billed_sessions": sessions}, BILLS)
    assert outcome.failed == {
        "bill amount equals the sum of its lines": ["1", "10"],
        "bill status is known": ["2"],
    }
    assert outcome.rows == {"bills": 4, "billed_sessions": 2}


def test_every_expectation_of_every_suite_is_a_gx_expectation_on_its_frames_columns() -> None:
    """An `Expect` names its GX class by a string: a misspelt one would fail only on a night
    with rows. Each builds, and each check has its suite."""
    import great_expectations.expectations as gxe

    from billing_pipeline.checks.suites import SUITES

    assert set(SUITES) == CHECK_NAMES
    for name, expects in SUITES.items():
        assert expects, name
        for e in expects:
            built = e.build(gxe)
            assert isinstance(built, gxe.Expectation), (name, e.label)
            for key, value in e.kwargs.items():
                assert getattr(built, key) == value, (name, e.label, key)


def test_failing_rows_are_named_by_kind_and_id_only() -> None:
    """Bills, attempts and deliveries by `bill-7`, `attempt-3`, `delivery-5`; sessions and
    clients by their own ids; the description lists them."""
    import dagster as dg

    from billing_pipeline.checks.suites import BILLS, suite_result

    outcome = expectations.SuiteOutcome(
        {"bills": 3, "billed_sessions": 2},
        {
            "bill amount equals the sum of its lines": ["7"],
            "session is on one bill only": ["s-1"],
        },
    )
    result = suite_result(outcome, [NOV2, NOV3], BILLS, dg.AssetCheckSeverity.ERROR)
    assert not result.passed
    assert result.metadata["failing_ids"].value == {
        "bill amount equals the sum of its lines": ["bill-7"],
        "session is on one bill only": ["s-1"],
    }
    assert result.metadata["nights"].value == "2026-11-02..2026-11-03"
    assert result.metadata["failing_rows"].value == 2
    assert "bill-7" in (result.description or "") and "s-1" in (result.description or "")
