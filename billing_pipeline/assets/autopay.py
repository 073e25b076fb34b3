"""autopay_attempts and statements: AutoPay at 00:30, and the monthly statements (made at
00:00 on the 1st, after the AutoPay of the nights before)."""

from datetime import date, datetime, timedelta

import dagster as dg
from pydantic import Field

from billing_pipeline.assets.billing import bills
from billing_pipeline.assets.common import (
    for_each_night,
    for_each_practice_night,
    practice_check,
    practice_check_spec,
    summarize,
)
from billing_pipeline.assets.sessions import NIGHTLY
from billing_pipeline.checks.invariants import no_bill_paid_twice
from billing_pipeline.db.nightly import NightFigures, create_statements
from billing_pipeline.db.store import AccountView
from billing_pipeline.resources.clock import Clock
from billing_pipeline.resources.database import BillingDatabase
from billing_pipeline.resources.payments import Payments
from billing_pipeline.services.autopay import BILLS_NOT_MADE, run_autopay_night

UNKNOWN_OUTCOMES = ("left_pending_for_reconciliation", "reconcile_stripe_unavailable")


class AutopayConfig(dg.Config):
    """How long a pending attempt is left to the run that claimed it before reconciliation
    settles it with Stripe. Keep it above the longest a charge can take (Payments'
    `max_call_seconds()`, ~5 minutes with the defaults), or reconciliation could send again
    a charge a live run is still waiting on. Tests that kill a run set it to 0."""

    reconcile_after_seconds: int = Field(default=600, ge=0)


@dg.asset(
    **NIGHTLY,
    deps=[bills],
    check_specs=[
        dg.AssetCheckSpec("no_bill_paid_twice", asset="autopay_attempts", blocking=True),
        practice_check_spec("autopay_attempts"),
    ],
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
    failed: dict[str, str] = {}

    def one(account: AccountView, night: date, at: datetime) -> NightFigures:
        result = run_autopay_night(
            db,
            payments,
            account.id,
            night,
            at,
            run_id=context.run.run_id,
            stale_after=timedelta(seconds=config.reconcile_after_seconds),
        )
        if result.counts.get(BILLS_NOT_MADE):
            context.log.warning(
                f"AutoPay skipped for account {account.id} night {night}: bills not made"
            )
        unknown = sum(result.counts.get(k, 0) for k in UNKNOWN_OUTCOMES)
        if unknown:
            context.log.warning(
                f"AutoPay account {account.id} night {night}: {unknown} attempt(s) with no "
                "known outcome (Stripe unreachable, 5xx or 429); the next run reconciles them"
            )
        return result

    if config.reconcile_after_seconds < payments.max_call_seconds():
        context.log.warning(
            f"reconcile_after_seconds={config.reconcile_after_seconds} is below the longest a "
            f"charge can take ({payments.max_call_seconds():.0f} s): safe only when no other "
            "run is charging this practice"
        )
    figures = for_each_practice_night(context, db, clock, "autopay", one, failed)
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
                "left_pending_for_reconciliation",
                "reconciled_succeeded",
                "resent_after_reconciliation",
                "already_attempted",
                "claimed_by_another_run",
                BILLS_NOT_MADE,
            ],
        ),
        check_results=[check, practice_check("autopay_attempts", failed)],
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
    check_specs=[practice_check_spec("statements")],
)
def statements(
    context: dg.AssetExecutionContext, db: BillingDatabase, clock: Clock
) -> dg.MaterializeResult:
    """At 00:00 on the 1st, last month's statement for each client with a bill or a payment in
    that month or an open balance (after that night's bills, before its AutoPay)."""
    failed: dict[str, str] = {}
    figures = for_each_night(context, db, clock, "bills", create_statements, failed)
    return dg.MaterializeResult(
        metadata=summarize(figures, ["statements", "deliveries_queued"]),
        check_results=[practice_check("statements", failed)],
    )
