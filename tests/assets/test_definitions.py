"""The code location as Dagster loads it: `dagster definitions validate` passes for
workspace.yaml, and `billing_pipeline.definitions.defs` holds what production needs.

What is already tested elsewhere is not repeated here: the schedules' cron, timezone, default
status and resources (test_schedules.py), the sensor's job, interval, status and resources
(test_delivery_sensor.py), what the assets write (test_assets.py).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import dagster as dg
import pytest

from billing_pipeline.assets.common import EVERY_PRACTICE_DONE
from billing_pipeline.definitions import defs
from billing_pipeline.partitions import service_dates
from billing_pipeline.resources.payments import Payments

ROOT = Path(__file__).resolve().parents[2]
JOBS = {
    "nightly_billing_job",
    "autopay_job",
    "nightly_chain_job",
    "deliver_documents_job",
    "night_ledger_job",
    "finance_daily_job",
}
SCHEDULES = {
    "night_ledger_schedule": "night_ledger_job",
    "finance_daily_schedule": "finance_daily_job",
}
SENSORS = {
    "deliver_due_documents": {"deliver_documents_job"},
    # The catch-up sensor launches the 00:00 step and AutoPay (test_schedules.py).
    "launch_due_nights": {"nightly_billing_job", "autopay_job"},
}
# Sensors that launch nothing: they watch runs (test_run_alerts.py).
RUN_STATUS_SENSORS = {"alert_on_failed_runs"}
# Not a night's step: the ledger of every practice's nights, read whole each time.
NOT_NIGHTLY = {"night_ledger"}
# Dagster binds a default `io_manager` to every job; the assets return nothing to store.
DAGSTER_DEFAULTS = {"io_manager"}
# The helpers that run a step for each (night, practice) and fill `failed` for the check.
PER_PRACTICE_HELPERS = {
    "for_each_night",
    "for_each_practice_night",
    "for_each_night_of",
    "for_each_account_night_of",
    "for_each_account_nights_of",
}
# Assets that do not walk the practices' nights, with why they have no per-practice check.
NOT_PER_PRACTICE = {
    # A dry run (services/preview.py) that writes nothing: nothing of a practice's night is
    # left half done; its check says which previewed nights the AutoPay guard would hold.
    "night_preview",
    # One comparison of Stripe with our payments per night, for all practices at once
    # (services.autopay.ledger_drift); drift fails its own `stripe_charges_match_payments`.
    "payment_reconciliations",
    # The ledger reads every practice's steps at once; its check names the late ones.
    "night_ledger",
    # Finance's figures are read for all the run's practices and nights at once, and written
    # in one transaction per run; a night computed again replaces its rows.
    "finance_daily",
}


@pytest.fixture(autouse=True)
def _quiet_beta_warnings() -> None:
    warnings.filterwarnings("ignore", message=".*is currently in beta.*")


def asset_graph():
    return defs.resolve_asset_graph()


def asset_names() -> set[str]:
    return {key.to_user_string() for key in asset_graph().get_all_asset_keys()}


# --- dagster definitions validate ------------------------------------------------------------


@pytest.mark.slow
def test_dagster_definitions_validate_passes_for_the_workspace(tmp_path: Path) -> None:
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    dagster = Path(sys.executable).parent / "dagster"
    done = subprocess.run(
        [str(dagster), "definitions", "validate", "-w", "workspace.yaml"],
        cwd=ROOT,
        env={**os.environ, "DAGSTER_HOME": str(home), "STRIPE_API_KEY": "sk_test_validate"},
        capture_output=True,
        check=False,
        text=True,
        timeout=300,
    )
    output = re.sub(r"\x1b\[[0-9;]*m", "", done.stdout + done.stderr)  # no colours
    assert done.returncode == 0, output[-3000:]
    assert "Validation successful for code location billing_pipeline." in output, output
    assert "All code locations passed validation." in output, output


# --- what the code location holds --------------------------------------------------------------


def test_the_jobs_schedules_and_sensor_are_defined() -> None:
    jobs = {job.name for job in defs.resolve_all_job_defs()}
    assert jobs - {"__ASSET_JOB"} == JOBS  # Dagster's implicit job of all assets aside
    repository = defs.get_repository_def()
    assert {s.name for s in repository.schedule_defs} == set(SCHEDULES)
    assert {s.name for s in repository.sensor_defs} == set(SENSORS) | RUN_STATUS_SENSORS
    for name, job in SCHEDULES.items():
        assert defs.resolve_schedule_def(name).job_name == job
    for name, jobs in SENSORS.items():
        assert {j.name for j in defs.resolve_sensor_def(name).jobs} == jobs


def test_every_asset_and_job_has_a_description() -> None:
    specs = defs.resolve_all_asset_specs()
    assert {s.key.to_user_string() for s in specs} == asset_names()
    for spec in specs:
        assert (spec.description or "").strip(), f"asset {spec.key.to_user_string()}"
    for name in JOBS:
        assert (defs.resolve_job_def(name).description or "").strip(), f"job {name}"


def test_every_nightly_asset_is_a_service_date_with_single_run_backfills() -> None:
    """Every asset is nightly: partitioned by `service_dates` (one partition per service
    date), with `BackfillPolicy.single_run()`. A backfill of a range of nights is then one
    run, not one run per night: each asset walks the run's nights in order
    (`assets.common.run_nights`), so a night sees the bills and payments of the nights before
    it, and the runs of one backfill cannot race each other on the billing tables. This is
    also what `simulate` does (one `nightly_chain_job` run over the partition range)."""
    graph = asset_graph()
    keys = list(graph.get_all_asset_keys())
    assert len(keys) >= 8
    for spec in defs.resolve_all_asset_specs():
        if spec.key.to_user_string() in NOT_NIGHTLY:
            assert spec.partitions_def is None
            continue
        assert spec.partitions_def is service_dates, spec.key.to_user_string()
    for key in keys:
        if key.to_user_string() in NOT_NIGHTLY:
            continue
        node = graph.get(key)
        assert node.partitions_def is service_dates, key.to_user_string()
        assert node.backfill_policy == dg.BackfillPolicy.single_run(), key.to_user_string()
        assert node.backfill_policy.max_partitions_per_run is None, key.to_user_string()


def test_every_resource_needed_is_bound() -> None:
    bound = set(defs.resources or {})
    assert bound == {"db", "clock", "payments", "notifier", "renderer"}
    for assets_def in asset_graph().assets_defs:
        needed = set(assets_def.required_resource_keys) - DAGSTER_DEFAULTS
        names = sorted(k.to_user_string() for k in assets_def.keys)
        assert needed <= bound, f"{names} need {needed - bound}"
    for name in JOBS:
        job = defs.resolve_job_def(name)
        assert set(job.required_resource_keys) <= set(job.resource_defs), name
        assert set(job.required_resource_keys) - DAGSTER_DEFAULTS <= bound, name
    for name in SCHEDULES:
        assert set(defs.resolve_schedule_def(name).required_resource_keys) <= bound, name
    for name in SENSORS:
        assert set(defs.resolve_sensor_def(name).required_resource_keys) <= bound, name


def test_the_stripe_key_comes_from_the_environment() -> None:
    """Read from STRIPE_API_KEY when Stripe is called, never a config value: not an `EnvVar`
    either, whose absence would refuse the whole job (bills included) before its first step."""
    payments = (defs.resources or {})["payments"]
    assert isinstance(payments, Payments)
    assert payments.api_key is None
    assert payments.api_key_env_var == "STRIPE_API_KEY"
    # No resource holds a Stripe secret as a literal.
    for name, resource in (defs.resources or {}).items():
        if not isinstance(resource, dg.ConfigurableResource):
            continue
        for field in type(resource).model_fields:
            value = getattr(resource, field, None)
            if isinstance(value, str) and not isinstance(value, dg.EnvVar):
                assert not re.match(r"^(sk|rk)_", value), f"{name}.{field} is a literal key"


def per_practice_assets() -> set[str]:
    """The assets whose body runs the step practice by practice (through the helpers of
    assets/common.py that fill `failed` for the `every_practice_done` check)."""
    out = set()
    for assets_def in asset_graph().assets_defs:
        code = assets_def.op.compute_fn.decorated_fn.__code__
        if PER_PRACTICE_HELPERS & set(code.co_names):
            out.update(k.to_user_string() for k in assets_def.keys)
    return out


def test_every_asset_that_walks_the_practices_has_the_every_practice_done_check() -> None:
    graph = asset_graph()
    walking = per_practice_assets()
    assert walking == asset_names() - NOT_PER_PRACTICE
    for key in graph.get_all_asset_keys():
        checks = {c.name for c in graph.get(key).check_keys}
        if key.to_user_string() in walking:
            assert EVERY_PRACTICE_DONE in checks, key.to_user_string()
        else:
            assert checks, f"{key.to_user_string()} has no check at all"
