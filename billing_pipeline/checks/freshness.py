"""Freshness from the nights themselves: each practice's newest night done, against its
schedule in its own zone (domain/freshness.py). Evaluated by `night_ledger_job` every 15
minutes on the wall clock, so it says stale when the daemon stopped or a month is missing,
whenever the last materialisation happened (a backfill of an old month is not fresh data)."""

from __future__ import annotations

import dagster as dg

from billing_pipeline.assets.autopay import autopay_attempts
from billing_pipeline.assets.billing import bills
from billing_pipeline.db.catchup import newest_done_nights, practice_clocks
from billing_pipeline.domain.freshness import NightLag, lag
from billing_pipeline.domain.schedule import Step
from billing_pipeline.resources.clock import Clock
from billing_pipeline.resources.database import BillingDatabase

NEWEST_NIGHT_IS_RECENT = "newest_night_is_recent"
SHOWN = 50


def lags(db: BillingDatabase, clock: Clock, step: Step) -> list[NightLag]:
    now = clock.now_for("UTC")
    with db.engine.connect() as conn:
        practices = practice_clocks(conn)
        newest = newest_done_nights(conn, step)
    found = []
    for practice in practices:
        done = [newest[practice.account_id]] if practice.account_id in newest else []
        behind = lag(practice, step, done, now)
        if behind is not None:
            found.append(behind)
    return found


def freshness_result(late: list[NightLag], what: str) -> dg.AssetCheckResult:
    late = sorted(late, key=lambda x: (-x.nights_behind, x.account_id))
    lines = [f"- {x.describe()}" for x in late[:SHOWN]]
    return dg.AssetCheckResult(
        passed=not late,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={
            "practices_behind": dg.MetadataValue.int(len(late)),
            "most_nights_behind": dg.MetadataValue.int(late[0].nights_behind if late else 0),
            "behind": dg.MetadataValue.md(
                "\n".join(lines) if lines else f"Every practice's {what} is up to date."
            ),
        },
        description=(
            f"{len(late)} practice(s) behind: " + "; ".join(x.describe() for x in late[:5])
            if late
            else f"every practice's newest {what} is its last night"
        ),
    )


@dg.asset_check(
    asset=bills,
    name=NEWEST_NIGHT_IS_RECENT,
    description="Each practice's bills are up to date: the newest night billed is last night "
    "(00:00 in the practice's own timezone, an hour's grace). Read from the nights done, not "
    "from when Dagster last ran: a backfill of an old month does not make the bills fresh.",
)
def bills_newest_night_is_recent(db: BillingDatabase, clock: Clock) -> dg.AssetCheckResult:
    return freshness_result(lags(db, clock, Step.BILLS), "night billed")


@dg.asset_check(
    asset=autopay_attempts,
    name=NEWEST_NIGHT_IS_RECENT,
    description="Each practice's AutoPay is up to date: the newest night charged is last "
    "night (00:30 in the practice's own timezone, an hour's grace), read from the nights done.",
)
def autopay_newest_night_is_recent(db: BillingDatabase, clock: Clock) -> dg.AssetCheckResult:
    return freshness_result(lags(db, clock, Step.AUTOPAY), "night charged by AutoPay")


FRESHNESS_CHECKS = [bills_newest_night_is_recent, autopay_newest_night_is_recent]
