"""autopay_attempts and statements: AutoPay at 00:30, and the monthly statements (made at
00:00 on the 1st, after the AutoPay of the nights before)."""

from collections.abc import Callable
from datetime import date, datetime, timedelta

import dagster as dg
from pydantic import Field

from billing_pipeline.assets.billing import bills
from billing_pipeline.assets.common import (
    BILLING_OPS,
    FINANCE,
    for_each_night,
    for_each_practice_night,
    nightly_asset,
    practice_check,
    practice_check_spec,
    require_stripe,
    run_nights,
    summarize,
)
from billing_pipeline.checks.guard import autopay_nights_look_usual, autopay_nights_look_usual_spec
from billing_pipeline.checks.invariants import no_bill_paid_twice
from billing_pipeline.db import models as m
from billing_pipeline.db.owners import ClaimOwner, OwnerProbe
from billing_pipeline.domain.practice import AccountView
from billing_pipeline.domain.schedule import Step
from billing_pipeline.resources.clock import Clock
from billing_pipeline.resources.database import BillingDatabase
from billing_pipeline.resources.payments import Payments
from billing_pipeline.services.autopay import (
    BILLS_NOT_MADE,
    owner_gone_rule,
    run_autopay_night,
)
from billing_pipeline.services.guard import HELD_BY_GUARD
from billing_pipeline.services.nightly import NightFigures, create_statements

UNKNOWN_OUTCOMES = ("left_pending_for_reconciliation", "reconcile_stripe_unavailable")


# The figures each night's autopay_attempts shows first (the others follow).
AUTOPAY_FIGURES = (
    "attempts",
    "outcome_succeeded",
    "outcome_declined",
    "outcome_requires_action",
    "outcome_error",
    "left_pending_for_reconciliation",
    "reconciled_succeeded",
    "resent_after_reconciliation",
    "pending_in_another_run",
    "already_attempted",
    "claimed_by_another_run",
    BILLS_NOT_MADE,
    HELD_BY_GUARD,
)


class AutopayConfig(dg.Config):
    """How AutoPay holds its claims. A run owns the attempts it claims: a lock that dies with
    its process, and a lease it renews every quarter of `lease_seconds`. The next run settles a
    dead owner's attempts at once; a live owner's are left alone."""

    lease_seconds: int = Field(default=60, ge=1, description="Lease on a run's pending claims.")
    claim_batch_size: int = Field(
        default=16, ge=1, description="Attempts claimed at a time, just before they are charged."
    )


def run_ended(instance: dg.DagsterInstance) -> Callable[[str], bool]:
    """Dagster's word on another run: failed or canceled (run monitoring marks a run whose
    worker died failed) means its claims are nobody's. Unknown runs are not taken as ended."""

    def ended(run_id: str) -> bool:
        run = instance.get_run_by_id(run_id)
        return run is not None and run.status in (
            dg.DagsterRunStatus.FAILURE,
            dg.DagsterRunStatus.CANCELED,
        )

    return ended


@nightly_asset(
    table=m.AutopayAttempt,
    kinds={"postgres", "stripe"},
    owners=[BILLING_OPS, FINANCE],
    domain="payments",
    deps=[bills],
    check_specs=[
        dg.AssetCheckSpec(
            "no_bill_paid_twice",
            asset="autopay_attempts",
            blocking=True,
            description="No client paid a bill twice: no bill is covered by two successful "
            "AutoPay charges. Any such bill is listed by id, and the run fails so that staff "
            "refund it.",
        ),
        practice_check_spec("autopay_attempts", blocking=True),
        autopay_nights_look_usual_spec("autopay_attempts"),
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
    require_stripe(context, payments)
    failed: dict[str, str] = {}
    run_id = context.run.run_id

    def one(account: AccountView, night: date, at: datetime) -> NightFigures:
        result = run_autopay_night(
            db,
            payments,
            account.id,
            night,
            at,
            owner=owner,
            owner_gone=owner_gone,
            run_id=run_id,
            batch_size=config.claim_batch_size,
        )
        if result.counts.get(BILLS_NOT_MADE):
            context.log.warning(
                f"AutoPay skipped for account {account.id} night {night}: bills not made"
            )
        unknown = sum(result.counts.get(k, 0) for k in UNKNOWN_OUTCOMES)
        if unknown:
            # The practice's AutoPay is not done: the run fails once every practice ran, and
            # the next run settles these with Stripe before anything is sent again.
            failed[account.id] = (
                f"{night}: {unknown} attempt(s) with no known outcome (Stripe unreachable, "
                "5xx or 429)"
            )
            context.log.error(f"AutoPay account {account.id}: {failed[account.id]}")
        return result

    with ClaimOwner(db.engine, run_id, timedelta(seconds=config.lease_seconds)) as owner:
        owner_gone = owner_gone_rule(OwnerProbe(db.engine), run_ended(context.instance))
        figures = for_each_practice_night(context, db, clock, Step.AUTOPAY, one, failed)
    with db.engine.connect() as conn:
        check = no_bill_paid_twice(conn, run_nights(context))
    return dg.MaterializeResult(
        metadata=summarize(context, figures, AUTOPAY_FIGURES),
        check_results=[
            check,
            practice_check("autopay_attempts", failed),
            autopay_nights_look_usual("autopay_attempts", figures),
        ],
    )


@nightly_asset(
    table=m.Statement,
    kinds={"postgres", "pdf"},
    owners=[BILLING_OPS],
    domain="billing",
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
    figures = for_each_night(context, db, clock, Step.BILLS, create_statements, failed)
    return dg.MaterializeResult(
        metadata=summarize(context, figures, ["statements", "deliveries_queued"]),
        check_results=[practice_check("statements", failed)],
    )
