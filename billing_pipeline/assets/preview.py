"""night_preview: a dry run of each practice's night in the Dagster UI (services/preview.py)."""

from datetime import UTC, datetime

import dagster as dg
from pydantic import Field

from billing_pipeline.assets.common import BILLING_OPS, FINANCE, run_nights
from billing_pipeline.checks.guard import AUTOPAY_NIGHTS_LOOK_USUAL
from billing_pipeline.db.store import list_accounts
from billing_pipeline.partitions import service_dates
from billing_pipeline.resources.database import BillingDatabase
from billing_pipeline.services.preview import build_preview

COLUMNS = (
    ("account_id", "string"),
    ("night", "string"),
    ("bills", "int"),
    ("bills_cents", "int"),
    ("superbills", "int"),
    ("statements", "int"),
    ("deliveries", "int"),
    ("autopay_charges", "int"),
    ("autopay_cents", "int"),
    ("guard_would_hold", "bool"),
)


class NightPreviewConfig(dg.Config):
    account_ids: list[str] = Field(
        default_factory=list, description="The practices to preview (empty: every practice)."
    )


@dg.asset(
    partitions_def=service_dates,
    group_name="preview",
    kinds={"postgres"},
    owners=[BILLING_OPS, FINANCE],
    tags={"domain": "preview"},
    backfill_policy=dg.BackfillPolicy.single_run(),
    check_specs=[
        dg.AssetCheckSpec(
            AUTOPAY_NIGHTS_LOOK_USUAL,
            asset="night_preview",
            description="No previewed night would be held by the AutoPay anomaly guard.",
        )
    ],
)
def night_preview(
    context: dg.AssetExecutionContext, config: NightPreviewConfig, db: BillingDatabase
) -> dg.MaterializeResult:
    """What each practice's night (the partition's service date) would do before it runs:
    bills, superbills, statements, AutoPay charges and documents to share, by the night's own
    code in a transaction that is rolled back. Materialising it writes nothing to the billing
    database and charges nothing; the table is in the metadata (ids and amounts only)."""
    with db.engine.connect() as conn:
        accounts = list_accounts(conn, config.account_ids or None)
    now = datetime.now(UTC)
    records = []
    held = []
    for night in run_nights(context):
        for account in accounts:
            preview = build_preview(db.engine, account.id, night, now)
            would_hold = bool(preview["guard"]["would_hold"])
            if would_hold:
                held.append(f"{account.id} {night.isoformat()}")
            records.append(
                dg.TableRecord(
                    {
                        "account_id": account.id,
                        "night": night.isoformat(),
                        **preview["figures"],
                        "guard_would_hold": would_hold,
                    }
                )
            )
    schema = dg.TableSchema(columns=[dg.TableColumn(name, kind) for name, kind in COLUMNS])
    # Each night's own table on its own partition (a ranged run would copy one dict onto every
    # night: assets/common.py, summarize).
    for night in run_nights(context):
        context.add_asset_metadata(
            {
                "preview": dg.MetadataValue.table(
                    [r for r in records if r.data["night"] == night.isoformat()], schema=schema
                ),
                "practices": dg.MetadataValue.int(len(accounts)),
            },
            partition_key=night.isoformat(),
        )
    return dg.MaterializeResult(
        check_results=[
            dg.AssetCheckResult(
                check_name=AUTOPAY_NIGHTS_LOOK_USUAL,
                passed=not held,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={"would_hold": dg.MetadataValue.json(held)},
            )
        ],
    )
