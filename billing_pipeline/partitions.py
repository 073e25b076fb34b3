"""The date partitions: one partition is one service date.

Each practice runs a partition's night in its own zone (00:00 and 00:30 on the next local
day), so the partitions are plain dates in UTC with `end_offset=1`: at any instant, the newest
partition is today's UTC date, which covers the practices east of UTC (up to +14) whose night
has already ended.
"""

import dagster as dg

service_dates = dg.DailyPartitionsDefinition(
    start_date="2020-01-01", timezone="UTC", end_offset=1, fmt="%Y-%m-%d"
)

ACCOUNTS_TAG = "billing/account_ids"
DATABASE_TAG = "billing/database"
