"""eligible_sessions and resolved_settings: what a night will bill, and under which settings."""

import dagster as dg

from billing_pipeline.assets.common import (
    BILLING_OPS,
    for_each_account_nights_of,
    nightly_asset,
    practice_check,
    practice_check_spec,
    reading_practices,
    summarize,
)
from billing_pipeline.checks.invariants import imported_sessions_have_cpt_codes
from billing_pipeline.db import models as m
from billing_pipeline.db.eligibility import sql_decides
from billing_pipeline.domain.schedule import Step
from billing_pipeline.resources.clock import Clock
from billing_pipeline.resources.database import BillingDatabase
from billing_pipeline.services.nightly import (
    record_eligible_sessions_of_accounts,
    record_eligible_sessions_over,
    record_resolved_settings_of,
    record_resolved_settings_over,
)

# The figures each night's resolved_settings shows first.
SETTINGS_FIGURES = (
    "clients",
    "autopay_runs",
    "autopay_client_autopay_off",
    "autopay_billing_contact_autopay_off",
    "autopay_no_payment_method",
    "autopay_payment_method_expired",
    "settings_warnings",
)


@nightly_asset(
    table=m.EligibleSession,
    kinds={"postgres"},
    owners=[BILLING_OPS],
    domain="sessions",
    check_specs=[
        dg.AssetCheckSpec(
            "imported_sessions_have_cpt_codes",
            asset="eligible_sessions",
            description="Sessions imported from your previous EHR have no CPT code, so "
            "automation cannot bill them: staff bill them by hand or add the code (the session "
            "is then billed on its next night). Warns with the session ids met on these "
            "nights, listed on this page.",
        ),
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
    with db.engine.connect() as conn:
        # A backfill's range in a few statements where the database decides eligibility.
        ranged = record_eligible_sessions_over if sql_decides(conn) else None
    figures = for_each_account_nights_of(
        context, db, clock, Step.BILLS, ranged, record_eligible_sessions_of_accounts, failed
    )
    # The sessions the run's nights met without a CPT code (each night's figures list them).
    met = {sid for f in figures for sid in f.ids}
    with db.engine.connect() as conn:
        check = imported_sessions_have_cpt_codes(conn, met)
    return dg.MaterializeResult(
        metadata=summarize(
            context, figures, ["eligible_sessions", "imported_sessions_missing_cpt", "new_flags"]
        ),
        check_results=[check, practice_check("eligible_sessions", failed)],
    )


@nightly_asset(
    table=m.ResolvedSettings,
    kinds={"postgres"},
    owners=[BILLING_OPS],
    domain="settings",
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
    figures = for_each_account_nights_of(
        context,
        db,
        clock,
        Step.BILLS,
        record_resolved_settings_over,  # a backfill's range: practices read again on changes
        reading_practices(
            lambda conn, batch, night: record_resolved_settings_of(
                conn, [p for p, _ in batch], night, {p.account.id: at for p, at in batch}
            )
        ),
        failed,
    )
    return dg.MaterializeResult(
        metadata=summarize(context, figures, SETTINGS_FIGURES),
        check_results=[practice_check("resolved_settings", failed)],
    )
