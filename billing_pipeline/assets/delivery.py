"""delivery_queue: the night's documents waiting to be shared."""

import dagster as dg

from billing_pipeline.assets.autopay import autopay_attempts, statements
from billing_pipeline.assets.billing import superbills
from billing_pipeline.assets.common import (
    BILLING_OPS,
    for_each_account_night_of,
    nightly_asset,
    practice_check,
    practice_check_spec,
    run_nights,
    summarize,
)
from billing_pipeline.checks.invariants import deliveries_never_early
from billing_pipeline.db import models as m
from billing_pipeline.domain.schedule import Step
from billing_pipeline.resources.clock import Clock
from billing_pipeline.resources.database import BillingDatabase
from billing_pipeline.services.nightly import release_deliveries_of

# The figures each night's delivery_queue shows first.
DELIVERY_FIGURES = (
    "bill_deliveries",
    "superbill_deliveries",
    "statement_deliveries",
    "released_after_autopay",
    "held_autopay_not_run",
)


@nightly_asset(
    table=m.Delivery,
    kinds={"postgres", "pdf"},
    owners=[BILLING_OPS],
    domain="delivery",
    deps=[autopay_attempts, superbills, statements],
    check_specs=[
        dg.AssetCheckSpec(
            "deliveries_never_early",
            asset="delivery_queue",
            description="No bill, superbill or statement was shared with a client before "
            "its time (its creation plus the client's delay, and after AutoPay for bills that "
            "wait for it). Early deliveries are listed by id.",
        ),
        practice_check_spec("delivery_queue"),
    ],
)
def delivery_queue(
    context: dg.AssetExecutionContext, db: BillingDatabase, clock: Clock
) -> dg.MaterializeResult:
    """The night's bills, superbills and statements queued for sharing, each at its creation
    time plus the client's delay. Bills due after AutoPay were held until AutoPay ran; this
    releases them. The `deliver_due_documents` sensor shares what falls due."""
    failed: dict[str, str] = {}
    figures = for_each_account_night_of(
        context,
        db,
        clock,
        Step.AUTOPAY,
        lambda conn, batch, night: release_deliveries_of(conn, [a.id for a, _ in batch], night),
        failed,
    )
    with db.engine.connect() as conn:
        check = deliveries_never_early(conn, run_nights(context))
    return dg.MaterializeResult(
        metadata=summarize(context, figures, DELIVERY_FIGURES),
        check_results=[check, practice_check("delivery_queue", failed)],
    )
