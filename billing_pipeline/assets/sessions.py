"""eligible_sessions and resolved_settings: what a night will bill, and under which settings."""

import warnings
from datetime import timedelta

import dagster as dg

from billing_pipeline.assets.common import (
    for_each_night,
    practice_check,
    practice_check_spec,
    summarize,
)
from billing_pipeline.checks.invariants import imported_sessions_have_cpt_codes
from billing_pipeline.db.nightly import record_eligible_sessions, record_resolved_settings
from billing_pipeline.partitions import service_dates
from billing_pipeline.resources.clock import Clock
from billing_pipeline.resources.database import BillingDatabase

# `backfill_policy` is marked beta; we choose single-run backfills deliberately (README).
warnings.filterwarnings("ignore", category=dg.BetaWarning, message=".*backfill_policy.*")

# Some practice reaches midnight every hour or so; a chain step that has not run for 26 hours
# means the schedules stopped, and the UI shows it as failing freshness.
NIGHTLY_FRESHNESS = dg.FreshnessPolicy.time_window(
    fail_window=timedelta(hours=26), warn_window=timedelta(hours=25)
)

NIGHTLY = {
    "partitions_def": service_dates,
    "group_name": "billing",
    "kinds": {"sql"},
    "backfill_policy": dg.BackfillPolicy.single_run(),
    "pool": "billing_nightly",
    "freshness_policy": NIGHTLY_FRESHNESS,
}


@dg.asset(
    **NIGHTLY,
    check_specs=[
        dg.AssetCheckSpec("imported_sessions_have_cpt_codes", asset="eligible_sessions"),
        practice_check_spec("eligible_sessions"),
    ],
)
def eligible_sessions(
    context: dg.AssetExecutionContext, db: BillingDatabase, clock: Clock
) -> dg.MaterializeResult:
    """Sessions the night will bill: attended, client in automatic billing, with a CPT code,
    dated on or before the night and at most 90 days before it, on no bill yet. Imported
    sessions without CPT codes are left out and flagged for staff."""
    failed: dict[str, str] = {}
    figures = for_each_night(
        context,
        db,
        clock,
        "bills",
        lambda conn, p, night, _at: record_eligible_sessions(conn, p, night),
        failed,
    )
    with db.engine.connect() as conn:
        check = imported_sessions_have_cpt_codes(conn)
    return dg.MaterializeResult(
        metadata=summarize(
            figures, ["eligible_sessions", "imported_sessions_missing_cpt", "new_flags"]
        ),
        check_results=[check, practice_check("eligible_sessions", failed)],
    )


@dg.asset(
    **NIGHTLY,
    deps=[eligible_sessions],
    check_specs=[practice_check_spec("resolved_settings")],
)
def resolved_settings(
    context: dg.AssetExecutionContext, db: BillingDatabase, clock: Clock
) -> dg.MaterializeResult:
    """Each client's Billing Settings as the night applies them: bill creation from the
    account, everything else from the client, and whether AutoPay may charge them, with the
    reason when it may not."""
    failed: dict[str, str] = {}
    figures = for_each_night(
        context,
        db,
        clock,
        "bills",
        lambda conn, p, night, _at: record_resolved_settings(conn, p, night),
        failed,
    )
    return dg.MaterializeResult(
        metadata=summarize(
            figures,
            [
                "clients",
                "autopay_runs",
                "autopay_client_autopay_off",
                "autopay_billing_contact_autopay_off",
                "autopay_no_payment_method",
                "autopay_payment_method_expired",
                "settings_warnings",
            ],
        ),
        check_results=[practice_check("resolved_settings", failed)],
    )
