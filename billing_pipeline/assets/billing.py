"""bills and superbills: the documents a night makes at 00:00 (statements: assets/autopay.py)."""

import dagster as dg

from billing_pipeline.assets.common import (
    BILLING_OPS,
    for_each_account_nights_of,
    for_each_night,
    nightly_asset,
    practice_check,
    practice_check_spec,
    reading_practices,
    summarize,
)
from billing_pipeline.assets.sessions import eligible_sessions, resolved_settings
from billing_pipeline.checks.invariants import bill_totals_match_lines
from billing_pipeline.db import models as m
from billing_pipeline.domain.schedule import Step
from billing_pipeline.resources.clock import Clock
from billing_pipeline.resources.database import BillingDatabase
from billing_pipeline.services.nightly import (
    create_bills_of,
    create_bills_over,
    create_superbills,
)


@nightly_asset(
    table=m.Bill,
    kinds={"postgres", "pdf"},
    owners=[BILLING_OPS],
    domain="billing",
    deps=[eligible_sessions, resolved_settings],
    check_specs=[
        dg.AssetCheckSpec(
            "bill_totals_match_lines",
            asset="bills",
            blocking=True,
            description="Every bill made tonight adds up: its total is the sum of its lines "
            "(units times fee for each service). A bill that does not stops the night before "
            "AutoPay, so no client is charged a wrong amount; its bill ids are listed.",
        ),
        practice_check_spec("bills"),
    ],
)
def bills(
    context: dg.AssetExecutionContext, db: BillingDatabase, clock: Clock
) -> dg.MaterializeResult:
    """Tonight's bills, made from the night's `eligible_sessions` rows: one per session for
    daily practices, one per client on the last night of the month for monthly ones, none for
    manual ones. A session already on a bill is never billed again; each bill's delivery is
    queued with it."""
    run_id = context.run.run_id
    failed: dict[str, str] = {}
    figures = for_each_account_nights_of(
        context,
        db,
        clock,
        Step.BILLS,
        # A backfill's range: only the practices with eligible sessions on a night are read.
        lambda conn, accounts, nights: create_bills_over(conn, accounts, nights, run_id),
        reading_practices(
            lambda conn, batch, night: create_bills_of(conn, batch, night, run_id),
            cards=False,  # bills plan from bill creation, sharing and contacts: no card read
            listed_only=True,  # of the clients the night's eligible sessions list
        ),
        failed,
    )
    with db.engine.connect() as conn:
        check = bill_totals_match_lines(conn, sorted({f.night for f in figures}))
    return dg.MaterializeResult(
        metadata=summarize(
            context,
            figures,
            ["bills", "deliveries_queued", "not_due_yet", "eligible_sessions_not_listed"],
        ),
        check_results=[check, practice_check("bills", failed)],
    )


@nightly_asset(
    table=m.Superbill,
    kinds={"postgres", "pdf"},
    owners=[BILLING_OPS],
    domain="billing",
    deps=[resolved_settings],
    check_specs=[practice_check_spec("superbills")],
)
def superbills(
    context: dg.AssetExecutionContext, db: BillingDatabase, clock: Clock
) -> dg.MaterializeResult:
    """On the practice's superbill day (the month's last day when the month is shorter), a
    superbill for last month for each client with superbills on who had attended sessions
    with CPT codes in it. Bill creation does not change this day."""
    failed: dict[str, str] = {}
    figures = for_each_night(context, db, clock, Step.BILLS, create_superbills, failed)
    return dg.MaterializeResult(
        metadata=summarize(context, figures, ["superbills", "deliveries_queued"]),
        check_results=[practice_check("superbills", failed)],
    )
