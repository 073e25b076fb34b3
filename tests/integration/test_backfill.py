"""A month backfilled through Dagster's own machinery bills what the nightly schedule would have,
on SQLite and PostgreSQL, and a second identical backfill creates nothing (README, "Done when";
on PostgreSQL: SQLite's reruns are tests/contract/test_rerun_scenarios.py's).

The backfill is launched the way the UI launches one: the `launchPartitionBackfill` GraphQL
mutation (executed here by dagster-graphql on workspace.yaml as its CLI executes it, in the test
process) for the assets of `nightly_chain_job` and the 31 service dates Oct 1..31 2026. That
stores an asset backfill in the instance, and the real `dagster-daemon run -w workspace.yaml`
executes it: the backfill daemon plans runs from the assets' single-run backfill policy, the
queued run coordinator dequeues them and the default run launcher starts them through the
daemon's code server, with the production resources (the wall clock: every night is long past,
so everything is due; what a step makes is stamped with its scheduled instant, as on the
schedule).

Dagster plans it in ranged runs: eligible_sessions .. autopay_attempts (and the superbills and
the reconciliation) over Oct 1..31, then statements and delivery_queue over Oct 1..Nov 1, which
the daemon may split in more than one run as their parents' partitions and AutoPay's blocking
check come in: statements of a night read the AutoPay of the night before (a -1 partition
mapping), so the backfill's downstream walk adds Nov 1 for them (its statements step, on Nov 2,
makes nothing here). That walk visits an asset once, in an order that follows set iteration in
the launching process (so PYTHONHASHSEED): when it reaches statements from bills before
autopay_attempts, the backfill targets Oct 1..31 for every asset and plans one run of all
eight. Both plans must bill the same; the test checks that the runs between them cover every
night.

Why not `dagster job backfill`: that CLI launches one run per partition by itself, ignoring the
single-run policy, and the queue starts those 31 runs up to max_concurrent_runs side by side,
whereas a backfill must walk the nights in order as the schedule did.

"What the schedule would have billed" is `billing-pipeline simulate` of the same range on a
second fresh database: the logical clock runs every step at its scheduled instant, night after
night (tests/contract checks that against hand-worked expectations). The reports are compared
on everything that does not depend on when the work ran. It is one of the session's shared
simulations (tests/simulated.py), made once for both backends' backfills while the daemon
works on the first one.

What keeps it quick (each measured; see the commits): the daemon's backfill loop every
BACKFILL_DAEMON_INTERVAL_SECONDS instead of its fixed 30 s, the queue dequeued every second,
Dagster's storage on PostgreSQL in the PostgreSQL case (as in production's dagster.yaml) and a
consolidated SQLite event log in the SQLite case, the backfill's runs executed in process (the
code location's executor, as for a backfill launched from the UI), and one code server in the
test process for the ticks and the two launches instead of a CLI process each.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import stripe
from dagster._core.events import DagsterEventType
from dagster._core.execution.backfill import BULK_ACTION_TERMINAL_STATUSES, BulkActionStatus
from dagster._core.instance.ref import InstanceRef
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
    BACKFILL_ID_TAG,
)
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import WorkspaceFileTarget
from dagster_graphql.cli import execute_query
from sqlalchemy import func, select

from billing_pipeline.db import models as m
from billing_pipeline.db.engine import get_engine
from tests.conftest import create_pg_database, drop_pg_database
from tests.contract.runner import (
    REPORT_LISTS,
    cli_in_process,
    environment,
    report_multisets,
    report_of,
)
from tests.simulated import Simulations

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = ROOT / "tests" / "scenarios" / "backfill_month.json"
FIRST, LAST = date(2026, 10, 1), date(2026, 10, 31)
NIGHTS = [(FIRST + timedelta(days=i)).isoformat() for i in range((LAST - FIRST).days + 1)]
BACKFILL_TIMEOUT_SECONDS = 300
POLL_SECONDS = 0.5
# The backfill daemon evaluates backfills every 30 s, a constant that no setting changes
# (dagster._daemon.controller.DEFAULT_DAEMON_INTERVAL_SECONDS, read by its loop). The test's
# daemon runs the same `dagster-daemon run` with that interval shortened; see _daemon.
BACKFILL_DAEMON_INTERVAL_SECONDS = 2

# The test instance: the default queued run coordinator (dequeuing every second instead of 5 s)
# and run launcher, and production's pool limit (one nightly step at a time). Storage is added
# by _dagster_home.
INSTANCE_YAML = """\
telemetry:
  enabled: false
concurrency:
  pools:
    default_limit: 1
run_queue:
  dequeue_interval_seconds: 1
"""

# SQLite: Dagster's storage in the home folder, with its event log in one database rather than
# one per run plus an index (each event is one connection instead of two: most of a run's time
# here is spent writing events). PostgreSQL: a Dagster database of its own, as in production.
STORAGE_SQLITE = """\
event_log_storage:
  module: dagster.core.storage.event_log
  class: ConsolidatedSqliteEventLogStorage
  config:
    base_dir: {home}/history
"""
STORAGE_PG = """\
storage:
  postgres:
    postgres_url: {url}
"""

LAUNCH_BACKFILL = """
mutation LaunchBackfill($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on Error { message }
    ... on PythonError { stack }
  }
}
"""

# Our own document ids differ between two databases, and delivery state depends on when the
# documents were shared (see _pause_ticks). Every other time is the step's scheduled instant on
# both clocks, so it must match too.
NOT_COMPARED = ("id", "document_id", "delivered_at", "bill_status_at_delivery")
COUNTED_TABLES = (
    "bills",
    "bill_sessions",
    "bill_lines",
    "autopay_attempts",
    "autopay_attempt_bills",
    "payments",
    "superbills",
    "statements",
    "documents",
    "deliveries",
    "portal_shares",
    "check_flags",
)


# --- The CLI and the report ------------------------------------------------------------------


def _ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-2000:]
    return done.stdout


def _differences(backfilled: dict[str, Any], scheduled: dict[str, Any]) -> str:
    """What one report has and the other lacks, list by list (ids only: no PHI)."""
    ours = report_multisets(backfilled, NOT_COMPARED)
    theirs = report_multisets(scheduled, NOT_COMPARED)
    lines = []
    for name in REPORT_LISTS:
        for side, items in (
            ("backfill only", ours[name] - theirs[name]),
            ("schedule only", theirs[name] - ours[name]),
        ):
            lines += [f"{name}, {side} ({n}x): {item}" for item, n in sorted(items.items())]
    return "\n".join(lines)


def _row_counts(database_url: str) -> dict[str, int]:
    """Rows in every table the nights write (a second run must add none, even unreported)."""
    tables = m.Base.metadata.tables
    with get_engine(database_url).connect() as conn:
        return {
            name: conn.execute(select(func.count()).select_from(tables[name])).scalar_one()
            for name in COUNTED_TABLES
        }


def _succeeded_intents(env: dict[str, str]) -> list[str]:
    """Ids of the succeeded PaymentIntents on this database's Stripe customers, read with the
    real stripe SDK (the session's localstripe is shared by many databases)."""
    with get_engine(env["BILLING_DATABASE_URL"]).connect() as conn:
        customers = set(conn.execute(select(m.PaymentMethod.stripe_customer_id)).scalars())
    client = stripe.StripeClient(
        env["STRIPE_API_KEY"], base_addresses={"api": env["STRIPE_API_BASE"]}
    )
    intents = client.v1.payment_intents.list(params={"limit": 100}).auto_paging_iter()
    return sorted(pi.id for pi in intents if pi.customer in customers and pi.status == "succeeded")


def _scheduled_report(simulations: Simulations) -> dict[str, Any]:
    """What the nightly schedule would have made: simulate of the range on a database of its
    own, made once per test session and shared by both backends' backfills (the contract
    scenarios show that the backends bill alike)."""
    return simulations.get(SCENARIO, "sqlite", (FIRST, LAST)).report


# --- Dagster: the instance, the daemon, the backfill ----------------------------------------


@contextmanager
def _dagster_home(env: dict[str, str]) -> Iterator[Path]:
    """The test's DAGSTER_HOME: INSTANCE_YAML, with the storage of its backend."""
    home = Path(env["DAGSTER_HOME"])
    if env["BILLING_DATABASE_URL"].startswith("sqlite"):
        storage = STORAGE_SQLITE.format(home=home)
        (home / "dagster.yaml").write_text(INSTANCE_YAML + storage)
        yield home
        return
    url = create_pg_database()
    try:
        (home / "dagster.yaml").write_text(INSTANCE_YAML + STORAGE_PG.format(url=url))
        yield home
    finally:
        drop_pg_database(url)


@contextmanager
def _workspace(
    instance: dg.DagsterInstance, env: dict[str, str]
) -> Iterator[WorkspaceProcessContext]:
    """The project's workspace.yaml loaded as the `dagster` and `dagster-graphql` CLIs load it
    (a code server of its own for the location), in this process."""
    with (
        environment(env),
        WorkspaceProcessContext(
            instance, WorkspaceFileTarget(paths=[str(ROOT / "workspace.yaml")])
        ) as context,
    ):
        yield context


def _pause_ticks(instance: dg.DagsterInstance, workspace: WorkspaceProcessContext) -> None:
    """Stop the ledger's schedule, the catch-up sensor and the delivery sensor (RUNNING by
    default) before the daemon starts, as `dagster schedule stop` and `dagster sensor stop` do.
    The daemon would run them too: the catch-up sensor would launch the nights inside its
    horizon on top of the backfill, and the delivery sensor would share documents at
    wall-clock minutes, so the reports would depend on when the test runs. Only the backfill
    runs here."""
    location = workspace.create_request_context().get_code_location("billing_pipeline")
    (repo,) = location.get_repositories().values()
    schedule = repo.get_schedule("night_ledger_schedule")
    instance.stop_schedule(schedule.get_remote_origin_id(), schedule.selector_id, schedule)
    for name in ("launch_due_nights", "deliver_due_documents"):
        sensor = repo.get_sensor(name)
        instance.stop_sensor(sensor.get_remote_origin_id(), sensor.selector_id, sensor)


# `dagster-daemon run` (the console script's own two lines), with the backfill daemon's
# interval shortened first: it is read when the daemon's backfill loop starts.
DAEMON_MAIN = f"""\
import sys
import dagster._daemon.controller as controller
from dagster._daemon.cli import main
assert controller.DEFAULT_DAEMON_INTERVAL_SECONDS == 30, "Dagster changed: see test_backfill.py"
controller.DEFAULT_DAEMON_INTERVAL_SECONDS = {BACKFILL_DAEMON_INTERVAL_SECONDS}
sys.argv = ["dagster-daemon", "run", "-w", "workspace.yaml"]
sys.exit(main())
"""


@contextmanager
def _daemon(env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`dagster-daemon run -w workspace.yaml` as in production, until the block ends (its
    backfill loop every BACKFILL_DAEMON_INTERVAL_SECONDS instead of 30). Its own process
    group holds its code server and run workers, so nothing outlives the test."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", DAEMON_MAIN],
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # stragglers of this daemon's own group only
            except ProcessLookupError:
                pass


def _chain_asset_paths() -> list[list[str]]:
    from billing_pipeline.definitions import defs

    keys = defs.resolve_job_def("nightly_chain_job").asset_layer.executable_asset_keys
    return [key.path for key in sorted(keys, key=lambda k: k.to_user_string())]


def _launch_backfill(workspace: WorkspaceProcessContext, title: str) -> str:
    """Launch the backfill exactly as the UI does (the GraphQL mutation, executed by
    dagster-graphql on the workspace as its CLI executes it), return its id."""
    params = {
        "assetSelection": [{"path": path} for path in _chain_asset_paths()],
        "partitionNames": NIGHTS,
        "title": title,
    }
    out = execute_query(workspace, LAUNCH_BACKFILL, {"params": params})
    assert "errors" not in out, out["errors"]
    result = out["data"]["launchPartitionBackfill"]
    assert result["__typename"] == "LaunchBackfillSuccess", result
    return result["backfillId"]


def _diagnosis(instance: dg.DagsterInstance, backfill_id: str, log: Path) -> str:
    """Why a backfill did not succeed: its status and error, each run's failure events (ids
    only: no PHI), and the end of the daemon's log."""
    backfill = instance.get_backfill(backfill_id)
    lines = [f"backfill {backfill_id}: {backfill.status if backfill else 'missing'}"]
    if backfill and backfill.error:
        lines.append(backfill.error.to_string())
    for run in instance.get_runs(filters=dg.RunsFilter.for_backfill(backfill_id)):
        lines.append(f"run {run.run_id} {run.job_name}: {run.status}")
        failures = instance.all_logs(
            run.run_id,
            of_type={
                DagsterEventType.STEP_FAILURE,
                DagsterEventType.RUN_FAILURE,
                DagsterEventType.ENGINE_EVENT,
            },
        )
        for entry in failures:
            event = entry.dagster_event
            error = getattr(event.event_specific_data, "error", None) if event else None
            if event and (event.event_type != DagsterEventType.ENGINE_EVENT or error):
                lines.append(f"  {event.event_type_value} {event.step_key or ''}: {entry.message}")
                if error:
                    lines.append("  " + error.to_string()[-3000:])
    tail = log.read_text(errors="replace").splitlines()[-60:] if log.exists() else []
    return "\n".join([*lines, "--- daemon log (end) ---", *tail])


def _wait_for_backfill(
    instance: dg.DagsterInstance,
    backfill_id: str,
    daemon: subprocess.Popen[bytes],
    log: Path,
) -> None:
    """Poll until the daemon finishes the backfill; assert it and all its runs succeeded."""
    deadline = time.monotonic() + BACKFILL_TIMEOUT_SECONDS
    while True:
        backfill = instance.get_backfill(backfill_id)
        assert backfill is not None, f"backfill {backfill_id} is not in the instance"
        if backfill.status in BULK_ACTION_TERMINAL_STATUSES:
            break
        if daemon.poll() is not None or time.monotonic() > deadline:
            pytest.fail(
                f"backfill not done ({daemon.returncode=}):\n"
                + _diagnosis(instance, backfill_id, log),
                pytrace=False,
            )
        time.sleep(POLL_SECONDS)
    runs = instance.get_runs(filters=dg.RunsFilter.for_backfill(backfill_id))
    if (
        backfill.status != BulkActionStatus.COMPLETED_SUCCESS
        or not runs
        or any(r.status != dg.DagsterRunStatus.SUCCESS for r in runs)
    ):
        pytest.fail(_diagnosis(instance, backfill_id, log), pytrace=False)
    return runs


def _assert_in_run_history(instance: dg.DagsterInstance, backfill_id: str) -> None:
    """The backfill's runs are in the instance's run history, tagged with it, and between them
    they ran every asset of the night's chain over the whole range."""
    runs = [r for r in instance.get_runs() if r.tags.get(BACKFILL_ID_TAG) == backfill_id]
    assert runs, f"no run of backfill {backfill_id} in the run history"
    ran = {key.path[-1] for r in runs for key in r.asset_selection or ()}
    assert ran == {path[-1] for path in _chain_asset_paths()}, ran
    covered: dict[str, set[str]] = {}
    for run in runs:
        assert run.status == dg.DagsterRunStatus.SUCCESS, (run.run_id, run.status)
        first = date.fromisoformat(run.tags[ASSET_PARTITION_RANGE_START_TAG])
        last = date.fromisoformat(run.tags[ASSET_PARTITION_RANGE_END_TAG])
        nights = {(first + timedelta(days=i)).isoformat() for i in range((last - first).days + 1)}
        for key in run.asset_selection or ():
            covered.setdefault(key.path[-1], set()).update(nights)
    for asset, nights in covered.items():
        assert set(NIGHTS) <= nights, (asset, sorted(set(NIGHTS) - nights))


# --- The test -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_backfilled_month_bills_what_the_schedule_would_have_and_only_once(
    cli_env: dict[str, str], simulations: Simulations, tmp_path: Path
) -> None:
    assert datetime.now(UTC).date() > LAST + timedelta(days=2), "the month must be in the past"
    # The second, identical backfill on production's backend only: on SQLite, running the
    # same nights again is tested without the daemon (tests/contract/test_rerun_scenarios.py),
    # and each daemon-launched run costs seconds of process start on a 2-core machine.
    again = cli_env["BILLING_DATABASE_URL"].startswith("postgresql")
    _ok(cli_in_process(cli_env, "scenario", "load", str(SCENARIO)))
    log = tmp_path / "daemon.log"
    with (
        _dagster_home(cli_env) as home,
        dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home))) as instance,
        _workspace(instance, cli_env) as workspace,
    ):
        _pause_ticks(instance, workspace)
        first_id = _launch_backfill(workspace, "october-2026")
        with _daemon(cli_env, log) as daemon:
            # The daemon works on the backfill meanwhile (mostly waiting on processes).
            scheduled = _scheduled_report(simulations)
            _wait_for_backfill(instance, first_id, daemon, log)
            first = report_of(cli_env, run=cli_in_process)
            rows = _row_counts(cli_env["BILLING_DATABASE_URL"])
            charged = _succeeded_intents(cli_env)

            if again:
                second_id = _launch_backfill(workspace, "october-2026-again")
                _wait_for_backfill(instance, second_id, daemon, log)
        _assert_in_run_history(instance, first_id)
        if again:
            _assert_in_run_history(instance, second_id)

    assert first["bills"] and charged, "the first backfill made nothing to compare"
    if again:  # The second backfill created nothing and charged no one again.
        assert report_of(cli_env, run=cli_in_process) == first
        assert _row_counts(cli_env["BILLING_DATABASE_URL"]) == rows
        assert _succeeded_intents(cli_env) == charged

    # The first backfill billed what the schedule would have (which is not nothing).
    outcomes = Counter(a["outcome"] for a in scheduled["autopay_attempts"])
    assert len(scheduled["bills"]) >= 10 and {b["status"] for b in scheduled["bills"]} == {
        "paid",
        "open",
    }
    assert outcomes["succeeded"] >= 5 and outcomes["declined"] >= 1, outcomes
    assert scheduled["superbills"] and scheduled["statements"] and scheduled["flags"]
    assert not (diff := _differences(first, scheduled)), diff
    assert len(charged) == outcomes["succeeded"]
