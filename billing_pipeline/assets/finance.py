"""finance_daily: finance's figures per practice and night, as a table in the database and in
each materialisation."""

from datetime import UTC, datetime

import dagster as dg
import pandas as pd

from billing_pipeline.assets.common import FINANCE, run_accounts, run_nights
from billing_pipeline.assets.delivery import delivery_queue
from billing_pipeline.db.finance import FIGURES, finance_inputs, replace_finance_rows
from billing_pipeline.domain.money import dollars
from billing_pipeline.partitions import service_dates
from billing_pipeline.resources.database import BillingDatabase
from billing_pipeline.services.finance import daily_figures

CENTS = "Integer cents"
FINANCE_SCHEMA = dg.TableSchema(
    columns=[
        dg.TableColumn("account_id", "string", description="The practice."),
        dg.TableColumn("night", "date", description="The service date."),
        dg.TableColumn("bills", "int", description="Bills the night made."),
        dg.TableColumn("bills_cents", "int", description=f"{CENTS}: their total."),
        dg.TableColumn(
            "collected_cents", "int", description=f"{CENTS}: collected by the night's AutoPay."
        ),
        dg.TableColumn("charges_succeeded", "int", description="AutoPay charges that paid."),
        dg.TableColumn("charges_declined", "int", description="Charges the bank declined."),
        dg.TableColumn("declined_cents", "int", description=f"{CENTS}: their total."),
        dg.TableColumn(
            "charges_requires_action",
            "int",
            description="Charges that need the client's authentication.",
        ),
        dg.TableColumn(
            "open_balance_cents",
            "int",
            description=f"{CENTS}: still owed after the night's AutoPay.",
        ),
        dg.TableColumn(
            "documents_shared", "int", description="The night's documents shared so far."
        ),
    ]
)
# The stored table: the figures and when they were computed.
TABLE_SCHEMA = dg.TableSchema(
    columns=[
        *FINANCE_SCHEMA.columns,
        dg.TableColumn("computed_at", "timestamp (UTC)", description="When they were computed."),
    ]
)
OPEN_BALANCE_NEVER_NEGATIVE = "open_balance_never_negative"


@dg.asset(
    partitions_def=service_dates,
    backfill_policy=dg.BackfillPolicy.single_run(),
    deps=[delivery_queue],
    group_name="finance",
    kinds={"pandas", "postgres"},
    owners=[FINANCE],
    tags={"domain": "finance"},
    metadata={"dagster/column_schema": TABLE_SCHEMA, "table": "finance_daily"},
    check_specs=[
        dg.AssetCheckSpec(
            OPEN_BALANCE_NEVER_NEGATIVE,
            asset="finance_daily",
            description="No practice's clients owe less than nothing after a night: AutoPay "
            "never collected more than was billed. Practices and nights are named.",
        )
    ],
)
def finance_daily(context: dg.AssetExecutionContext, db: BillingDatabase) -> dg.MaterializeResult:
    """Finance's night, per practice: bills made and their total, what AutoPay collected,
    declined and left needing the client's action, the open balance after AutoPay, and the
    documents shared. Stored in the `finance_daily` table (a night computed again replaces its
    rows) and exported with `billing-pipeline finance export --month YYYY-MM --csv`."""
    nights = run_nights(context)
    accounts = [a.id for a in run_accounts(context, db)]
    with db.engine.connect() as conn:
        figures = daily_figures(finance_inputs(conn, nights, accounts), nights, accounts)
    db.transact(
        lambda conn: replace_finance_rows(conn, figures, accounts, nights, datetime.now(UTC))
    )
    negative = figures[figures["open_balance_cents"] < 0]
    for night in nights:
        context.add_asset_metadata(
            night_metadata(figures[figures["night"] == night]), partition_key=night.isoformat()
        )
    return dg.MaterializeResult(
        check_results=[
            dg.AssetCheckResult(
                check_name=OPEN_BALANCE_NEVER_NEGATIVE,
                passed=negative.empty,
                metadata={
                    "practice_nights": dg.MetadataValue.json(
                        [f"{r.account_id} {r.night}" for r in negative.itertuples()][:100]
                    )
                },
            )
        ],
    )


def night_metadata(rows: pd.DataFrame) -> dict[str, dg.MetadataValue]:
    """One night's rows as finance reads them: the table, and its totals. Each partition gets
    its own (a ranged backfill's run would otherwise copy the batch's onto every night)."""
    records = [
        dg.TableRecord({k: (v.isoformat() if k == "night" else v) for k, v in row.items()})
        for row in rows.astype({k: "int64" for k in FIGURES}).to_dict("records")
    ]
    totals = {k: int(rows[k].sum()) for k in FIGURES if k != "open_balance_cents"}
    return {
        "finance": dg.MetadataValue.table(records=records, schema=FINANCE_SCHEMA),
        "rows": dg.MetadataValue.int(len(records)),
        **{k: dg.MetadataValue.int(v) for k, v in totals.items()},
        "bills_total": dg.MetadataValue.text(dollars(totals["bills_cents"])),
        "collected_total": dg.MetadataValue.text(dollars(totals["collected_cents"])),
    }
