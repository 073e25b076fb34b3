"""Replay the nightly automation for a range of service dates through Dagster.

The same assets, checks, jobs and sensor as production, with the logical clock: one run of
`nightly_chain_job` over the partition range (exactly what a single-run backfill launches),
then the delivery sensor's logic at the simulation's end, launching delivery runs until
nothing more is due. Every run lands in the instance's run history.

Why one run over the range equals night by night: each asset walks the nights in order, and
every rule that looks across assets reads the night's own instants (bills made by then,
payments by then, a bill's status at its delivery minute), never "whatever is in the table".
tests/contract checks that both give the same report.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
)

from billing_pipeline.config import data_dir
from billing_pipeline.partitions import DATABASE_TAG

# A new home gets storage in the folder itself (Dagster's default) and no telemetry.
DEFAULT_INSTANCE_YAML = """\
telemetry:
  enabled: false
"""
# The demo's home (and `billing-pipeline ui`'s): the nightly assets' pool gets its slot, so the
# UI shows no pool without a limit, and a daemon frees the slots of a run whose process died.
# Not for `simulate`'s default home, which runs no daemon: a simulate killed mid-step would
# keep its slot and the next one would wait for it.
POOLED_INSTANCE_YAML = """\
telemetry:
  enabled: false
concurrency:
  pools:
    default_limit: 1
run_monitoring:
  enabled: true
  start_timeout_seconds: 180
  max_resume_run_attempts: 0
  poll_interval_seconds: 60
  free_slots_after_run_end_seconds: 60
"""
QUIET_LOGS = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
MAX_DELIVERY_RUNS = 100


@dataclass
class SimulationResult:
    run_ids: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # failed checks: ids and counts only
    delivered: int = 0

    @property
    def success(self) -> bool:
        return not self.failed


def dagster_instance(config_yaml: str = DEFAULT_INSTANCE_YAML) -> dg.DagsterInstance:
    """The instance of DAGSTER_HOME, else a home in the project's data folder; a new home gets
    `config_yaml` as its dagster.yaml."""
    if not os.environ.get("DAGSTER_HOME"):
        home = data_dir() / "dagster_home"
        home.mkdir(parents=True, exist_ok=True)
        os.environ["DAGSTER_HOME"] = str(home)
    home = Path(os.environ["DAGSTER_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text(config_yaml)
    return dg.DagsterInstance.get()


def logical_run_config(until: date) -> dict[str, Any]:
    return {
        **QUIET_LOGS,
        "resources": {"clock": {"config": {"mode": "logical", "until_date": until.isoformat()}}},
    }


def simulate(first: date, last: date, instance: dg.DagsterInstance) -> SimulationResult:
    from billing_pipeline.definitions import defs
    from billing_pipeline.resources.clock import Clock
    from billing_pipeline.resources.database import BillingDatabase
    from billing_pipeline.resources.notifier import Notifier

    if last < first:
        raise ValueError(f"--to {last} is before --from {first}")
    until = last + timedelta(days=2)  # the simulation ends at 00:00 on the day after D2+1
    run_config = logical_run_config(until)
    result = SimulationResult()

    chain = defs.resolve_job_def("nightly_chain_job")
    run = chain.execute_in_process(
        instance=instance,
        run_config=run_config,
        tags={
            ASSET_PARTITION_RANGE_START_TAG: first.isoformat(),
            ASSET_PARTITION_RANGE_END_TAG: last.isoformat(),
            DATABASE_TAG: BillingDatabase().fingerprint(),
            "billing/simulated": "true",
        },
        raise_on_error=False,
    )
    result.run_ids.append(run.run_id)
    if not run.success:
        # As in production, where the delivery sensor runs whatever a chain run did: what is
        # due is still shared (a bill whose AutoPay is not settled is held by the rules).
        result.failed.append(run.run_id)
        result.problems.extend(failed_checks(run))

    # Nobody reads a simulation's documents as it runs: they are rendered when asked for
    # (`documents export`, the demo), as they stood when shared, not at each share.
    delivery_config = {
        **run_config,
        "resources": {
            **run_config["resources"],
            "renderer": {"config": {"render_on_share": False}},
        },
    }
    sensor = defs.resolve_sensor_def("deliver_due_documents")
    deliver = defs.resolve_job_def("deliver_documents_job")
    clock = Clock(mode="logical", until_date=until.isoformat())
    for _ in range(MAX_DELIVERY_RUNS):
        with dg.build_sensor_context(
            instance=instance,
            resources={"db": BillingDatabase(), "clock": clock, "notifier": Notifier()},
        ) as context:
            evaluation = sensor(context)
        requests = [r for r in _as_list(evaluation) if isinstance(r, dg.RunRequest)]
        if not requests:
            break
        for request in requests:
            run = deliver.execute_in_process(
                instance=instance,
                run_config=delivery_config,
                tags={**request.tags, "billing/simulated": "true"},
                raise_on_error=False,
            )
            result.run_ids.append(run.run_id)
            if not run.success:
                result.failed.append(run.run_id)
                return result
            result.delivered += int(run.output_for_node("share_due_documents"))
    return result


def failed_checks(run: dg.ExecuteInProcessResult) -> list[str]:
    """The ERROR checks that failed in a run, as 'asset.check: description' (the practices'
    ids, nights and counts: never a name)."""
    out = []
    for event in run.all_events:
        evaluation = event.event_specific_data
        if not isinstance(evaluation, dg.AssetCheckEvaluation):
            continue
        if evaluation.passed or evaluation.severity != dg.AssetCheckSeverity.ERROR:
            continue
        out.append(
            f"{evaluation.asset_key.to_user_string()}.{evaluation.check_name}: "
            f"{evaluation.description or 'failed'}"
        )
    return out


def _as_list(evaluation: object) -> list[object]:
    if evaluation is None:
        return []
    if isinstance(evaluation, dg.RunRequest | dg.SkipReason):  # NamedTuples: not a list
        return [evaluation]
    if isinstance(evaluation, list | tuple):
        return list(evaluation)
    return [evaluation]
