"""What each night's own figures cost a year's single-run backfill (issue 11, point 2).

A ranged run of 365 daily partitions of one asset, on a temporary SQLite Dagster instance, the
way the nightly assets report (assets/common.py, summarize): once with one metadata dict for
the whole run (what Dagster copies onto every partition), once with each night's own dict added
through `context.add_asset_metadata(..., partition_key=night)`. Dagster writes one
materialisation event per partition either way; the difference is building and validating the
per-night dicts. Median of 3 of each.

    .venv/bin/python -m bench.per_night_metadata [--nights 365]
"""

import argparse
import statistics
import time
from datetime import date, timedelta

import dagster as dg
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
)

PARTITIONS = dg.DailyPartitionsDefinition(start_date="2020-01-01", fmt="%Y-%m-%d")
FIGURES = ("bills", "deliveries_queued", "not_due_yet", "eligible_sessions_not_listed")


def figures(night: str) -> dict[str, dg.MetadataValue]:
    n = int(night[-2:])
    return {
        "night": dg.MetadataValue.text(night),
        **{key: dg.MetadataValue.int(n) for key in FIGURES},
        "amount_cents": dg.MetadataValue.int(n * 15000),
        "per_practice": dg.MetadataValue.json({f"acct-{i:02}": {"bills": n} for i in range(50)}),
    }


@dg.asset(partitions_def=PARTITIONS, backfill_policy=dg.BackfillPolicy.single_run())
def per_night(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    for night in context.partition_keys:
        context.add_asset_metadata(figures(night), partition_key=night)
    return dg.MaterializeResult()


@dg.asset(partitions_def=PARTITIONS, backfill_policy=dg.BackfillPolicy.single_run())
def one_dict(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata=figures(context.partition_keys[-1]))


def run(asset: dg.AssetsDefinition, first: date, last: date) -> float:
    tags = {
        ASSET_PARTITION_RANGE_START_TAG: first.isoformat(),
        ASSET_PARTITION_RANGE_END_TAG: last.isoformat(),
    }
    with dg.instance_for_test() as instance:
        started = time.perf_counter()
        result = dg.materialize([asset], instance=instance, tags=tags)
        elapsed = time.perf_counter() - started
        assert result.success
        events = result.asset_materializations_for_node(asset.key.to_user_string())
        assert len(events) == (last - first).days + 1
        if asset is per_night:
            assert {e.partition: e.metadata["night"].value for e in events} == {
                e.partition: e.partition for e in events
            }
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nights", type=int, default=365)
    args = parser.parse_args()
    first = date(2025, 1, 1)
    last = first + timedelta(days=args.nights - 1)
    for asset in (one_dict, per_night):
        times = [run(asset, first, last) for _ in range(3)]
        print(
            f"{asset.key.to_user_string():>9}: {args.nights} partitions in one run, median "
            f"{statistics.median(times):.2f} s ({', '.join(f'{t:.2f}' for t in times)})"
        )


if __name__ == "__main__":
    main()
