"""autopay_attempts and statements: AutoPay at 00:30, and the monthly statements (made at
00:00 on the 1st, after the AutoPay of the nights before)."""

from datetime import timedelta

import dagster as dg

from billing_pipeline.assets.billing import bills
from billing_pipeline.assets.common import for_each_night, run_accounts, run_nights, summarize
from billing_pipeline.assets.sessions import NIGHTLY
from billing_pipeline.checks.invariants import no_bill_paid_twice
from billing_pipeline.db.nightly import NightFigures, create_statements
from billing_pipeline.domain.schedule import step_instant
from billing_pipeline.resources.clock import Clock
from billing_pipeline.resources.database import BillingDatabase
from billing_pipeline.resources.payments import Payments
from billing_pipeline.services.autopay import BILLS_NOT_MADE, run_autopay_night


class AutopayConfig(dg.Config):
    """How long a pending attempt is left to the run that claimed it before reconciliation
    settles it with Stripe."""

    reconcile_after_seconds: int = 300


@dg.asset(
    **NIGHTLY,
    deps=[bills],
    check_specs=[dg.AssetCheckSpec("no_bill_paid_twice", asset="autopay_attempts", blocking=True)],
    retry_policy=dg.RetryPolicy(
        max_retries=2, delay=30, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
    ),
)
def autopay_attempts(
    context: dg.AssetExecutionContext,
    config: AutopayConfig,
    db: BillingDatabase,
    clock: Clock,
    payments: Payments,
) -> dg.MaterializeResult:
    """At 00:30 in each practice's zone, charge the whole open balance of every client whose
    AutoPay is on at the account, the client and the billing contact, with a card that has not
    expired. Each attempt is recorded before Stripe is called and never made twice."""
    figures: list[NightFigures] = []
    accounts = run_accounts(context, db)
    for night in run_nights(context):
        for account in accounts:
            scheduled = step_instant(night, account.timezone, "autopay")
            if not clock.is_due(scheduled, account.timezone):
                skipped = NightFigures(account.id, night)
                skipped.add("not_due_yet")
                figures.append(skipped)
                continue
            result = run_autopay_night(
                db,
                payments,
                account.id,
                night,
                clock.stamp(scheduled),
                run_id=context.run.run_id,
                stale_after=timedelta(seconds=config.reconcile_after_seconds),
            )
            if result.counts.get(BILLS_NOT_MADE):
                context.log.warning(
                    f"AutoPay skipped for account {account.id} night {night}: bills not made"
                )
            figures.append(result)
    with db.engine.connect() as conn:
        check = no_bill_paid_twice(conn)
    return dg.MaterializeResult(
        metadata=summarize(
            figures,
            [
                "attempts",
                "outcome_succeeded",
                "outcome_declined",
                "outcome_requires_action",
                "outcome_error",
                "already_attempted",
                BILLS_NOT_MADE,
            ],
        ),
        check_results=[check],
    )


@dg.asset(
    **NIGHTLY,
    deps=[
        bills,
        dg.AssetDep(
            autopay_attempts,
            partition_mapping=dg.TimeWindowPartitionMapping(start_offset=-1, end_offset=-1),
        ),
    ],
)
def statements(
    context: dg.AssetExecutionContext, db: BillingDatabase, clock: Clock
) -> dg.MaterializeResult:
    """At 00:00 on the 1st, last month's statement for each client with a bill or a payment in
    that month or an open balance (after that night's bills, before its AutoPay)."""
    figures = for_each_night(context, db, clock, "bills", create_statements)
    return dg.MaterializeResult(metadata=summarize(figures, ["statements", "deliveries_queued"]))
