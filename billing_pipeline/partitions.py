"""The date partitions: one partition is one service date.

Each practice runs a partition's night in its own zone (00:00 and 00:30 on the next local
day), so the partitions are plain dates in UTC with `end_offset=1`: at any instant, the newest
partition is today's UTC date, which covers the practices east of UTC (up to +14) whose night
has already ended.
"""

from collections.abc import Sequence
from datetime import date

import dagster as dg

service_dates = dg.DailyPartitionsDefinition(
    start_date="2020-01-01", timezone="UTC", end_offset=1, fmt="%Y-%m-%d"
)

ACCOUNTS_TAG = "billing/account_ids"
DATABASE_TAG = "billing/database"
# Shown in the run list: which nights and practices a run covered (set by the run itself, so a
# backfill launched from the UI carries them too).
NIGHTS_TAG = "billing/nights"
PRACTICES_TAG = "billing/practices"
PRACTICES_SHOWN = 8  # practice ids listed in the tag; more are counted


def nights_label(nights: Sequence[date]) -> str:
    """`2026-11-03`, or `2026-11-01..2026-11-03 (3 nights)` for a range."""
    if not nights:
        return "none"
    first, last = min(nights), max(nights)
    if first == last:
        return first.isoformat()
    return f"{first.isoformat()}..{last.isoformat()} ({len(set(nights))} nights)"


def practices_label(account_ids: Sequence[str]) -> str:
    """The practice ids, sorted; past a few, the first ones and how many in all."""
    ids = sorted(set(account_ids))
    if not ids:
        return "none"
    if len(ids) <= PRACTICES_SHOWN:
        return ",".join(ids)
    return ",".join(ids[:PRACTICES_SHOWN]) + f",... ({len(ids)} practices)"
