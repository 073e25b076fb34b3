"""What every nightly asset shares: the nights of the run, the practices it covers, and the
figures it reports. Wiring only; the rules are in domain/ and the writes in db/."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import date, datetime

import dagster as dg
from sqlalchemy import Connection

from billing_pipeline.db.nightly import NightFigures
from billing_pipeline.db.store import AccountView, Practice, list_accounts, load_practice
from billing_pipeline.domain.schedule import step_instant
from billing_pipeline.partitions import ACCOUNTS_TAG
from billing_pipeline.resources.clock import Clock
from billing_pipeline.resources.database import BillingDatabase

NightWork = Callable[[Connection, Practice, date, datetime], NightFigures]


def run_nights(context: dg.AssetExecutionContext) -> list[date]:
    """The run's service dates in order (one for a scheduled run, a range for a backfill)."""
    return sorted(date.fromisoformat(k) for k in context.partition_keys)


def run_accounts(context: dg.AssetExecutionContext, db: BillingDatabase) -> list[AccountView]:
    """The practices this run covers: those named by the schedule's tag, else all."""
    tag = context.run.tags.get(ACCOUNTS_TAG)
    ids = [a for a in tag.split(",") if a] if tag else None
    with db.engine.connect() as conn:
        return list_accounts(conn, ids)


def for_each_night(
    context: dg.AssetExecutionContext,
    db: BillingDatabase,
    clock: Clock,
    step: str,
    work: NightWork,
) -> list[NightFigures]:
    """Run `work` for every (night, practice) of the run, night by night in order, each in one
    transaction. A practice whose step time has not come yet is left for its own tick."""
    accounts = run_accounts(context, db)
    figures: list[NightFigures] = []
    for night in run_nights(context):
        for account in accounts:
            scheduled = step_instant(night, account.timezone, step)
            if not clock.is_due(scheduled, account.timezone):
                skipped = NightFigures(account.id, night)
                skipped.add("not_due_yet")
                figures.append(skipped)
                continue
            at = clock.stamp(scheduled)

            def one(
                conn: Connection, account_id: str = account.id, n: date = night, t: datetime = at
            ) -> NightFigures:
                return work(conn, load_practice(conn, account_id), n, t)

            figures.append(db.transact(one))
    return figures


def dollars(cents: int) -> str:
    return f"${cents / 100:,.2f}" if cents >= 0 else f"-${-cents / 100:,.2f}"


def summarize(figures: Sequence[NightFigures], headline: Sequence[str]) -> dict[str, object]:
    """Dagster metadata for finance: totals, amounts in dollars, a row per practice and per
    night. Ids and numbers only, never a name."""
    totals: dict[str, int] = {}
    amount = 0
    per_account: dict[str, dict[str, int]] = {}
    per_night: dict[str, dict[str, int]] = {}
    for f in figures:
        amount += f.amount_cents
        for key, n in f.counts.items():
            totals[key] = totals.get(key, 0) + n
            per_account.setdefault(f.account_id, {}).setdefault(key, 0)
            per_account[f.account_id][key] += n
            per_night.setdefault(f.night.isoformat(), {}).setdefault(key, 0)
            per_night[f.night.isoformat()][key] += n
        per_account.setdefault(f.account_id, {}).setdefault("amount_cents", 0)
        per_account[f.account_id]["amount_cents"] += f.amount_cents
        per_night.setdefault(f.night.isoformat(), {}).setdefault("amount_cents", 0)
        per_night[f.night.isoformat()]["amount_cents"] += f.amount_cents
    metadata: dict[str, object] = {
        key: dg.MetadataValue.int(totals.get(key, 0)) for key in headline
    }
    metadata["amount_cents"] = dg.MetadataValue.int(amount)
    metadata["amount"] = dg.MetadataValue.text(dollars(amount))
    metadata["practices"] = dg.MetadataValue.int(len(per_account))
    metadata["per_practice"] = dg.MetadataValue.json(per_account)
    metadata["per_night"] = dg.MetadataValue.json(per_night)
    return metadata
