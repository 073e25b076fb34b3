"""payment_reconciliations: finance's nightly comparison of Stripe with our payment rows, a table
of what disagrees."""

from datetime import UTC, datetime

import dagster as dg

from billing_pipeline.assets.autopay import autopay_attempts, run_ended
from billing_pipeline.assets.common import (
    FINANCE,
    nightly_asset,
    require_stripe,
    run_accounts,
    run_nights,
)
from billing_pipeline.db import models as m
from billing_pipeline.db.owners import OwnerProbe
from billing_pipeline.db.reconciliations import replace_reconciliations
from billing_pipeline.resources.database import BillingDatabase
from billing_pipeline.resources.payments import Payments
from billing_pipeline.services.autopay import ledger_drift, owner_gone_rule

CHECK = "stripe_charges_match_payments"


@nightly_asset(
    table=m.PaymentReconciliation,
    kinds={"postgres", "stripe"},
    owners=[FINANCE],
    domain="finance",
    deps=[autopay_attempts],
    check_specs=[
        dg.AssetCheckSpec(
            CHECK,
            asset="payment_reconciliations",
            # Drift fails the run (after the figures are recorded): finance must not miss it.
            blocking=True,
            description="Stripe's succeeded AutoPay charges and our payment rows agree, night "
            "by night: no charge we do not know, no payment Stripe does not have, no amount "
            "that differs, no attempt charged twice.",
        )
    ],
)
def payment_reconciliations(
    context: dg.AssetExecutionContext, db: BillingDatabase, payments: Payments
) -> dg.MaterializeResult:
    """Finance's table of where Stripe and our books disagree: for each night of the run, the
    succeeded PaymentIntents in Stripe that carry our AutoPay metadata against the payments we
    recorded for that night's attempts, one row per PaymentIntent that disagrees with both
    sides' figures (the night's rows are replaced; none means it agrees). Any drift fails the
    check and is logged as an error, with Stripe and attempt ids only (never a name)."""
    require_stripe(context, payments)
    nights = run_nights(context)
    accounts = [a.id for a in run_accounts(context, db)]
    drift = ledger_drift(
        db,
        payments,
        accounts,
        nights,
        owner_gone_rule(OwnerProbe(db.engine), run_ended(context.instance)),
    )
    per_night: dict[str, dict[str, int]] = {}
    details: dict[str, dict[str, list[str]]] = {}
    for night, d in drift.items():
        per_night[night.isoformat()] = d.counts()
        if not d.clean:
            details[night.isoformat()] = {
                "unknown_charges": list(d.unknown_charges),
                "missing_in_stripe": list(d.missing_in_stripe),
                "amount_mismatches": list(d.amount_mismatches),
                "charged_twice_attempt_ids": list(d.charged_twice),
            }
            context.log.error(
                f"Stripe and our payments disagree for night {night}: {d.counts()} "
                f"(PaymentIntents / attempts: {details[night.isoformat()]})"
            )
    drifted = sorted(details)
    # Finance's table: one row per PaymentIntent that disagrees, both sides' figures; the
    # run's nights are replaced for its practices (no row: the night agrees).
    rows = [(night, row) for night, d in sorted(drift.items()) for row in d.rows]
    db.transact(
        lambda conn: replace_reconciliations(conn, accounts, rows, nights, datetime.now(UTC))
    )
    # Each night's own figures on its own partition (a ranged run would copy one dict onto
    # every night: assets/common.py, summarize).
    for night in nights:
        counts = per_night.get(night.isoformat(), {})
        context.add_asset_metadata(
            {
                "night": dg.MetadataValue.text(night.isoformat()),
                "nights_with_drift": dg.MetadataValue.int(int(night.isoformat() in details)),
                "rows": dg.MetadataValue.int(sum(1 for n, _ in rows if n == night)),
                **{key: dg.MetadataValue.int(n) for key, n in sorted(counts.items())},
            },
            partition_key=night.isoformat(),
        )
    return dg.MaterializeResult(
        check_results=[
            dg.AssetCheckResult(
                check_name=CHECK,
                asset_key="payment_reconciliations",
                passed=not drifted,
                severity=dg.AssetCheckSeverity.ERROR,
                metadata={
                    "nights_with_drift": dg.MetadataValue.json(drifted),
                    "drift": dg.MetadataValue.json(details),
                },
                description="drift on " + ", ".join(drifted) if drifted else "no drift",
            )
        ],
    )
