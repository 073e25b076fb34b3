"""The nightly job on the dagster-celery executor (RabbitMQ at localhost:5672, a Celery worker
started here) bills exactly what the in-process job bills.

A public scenario is loaded into two PostgreSQL databases; the nightly job (`AT_MIDNIGHT`: eligible
sessions, settings, bills, superbills, statements) runs over the scenario's nights as one
ranged run on each: in process on the first, each step a Celery task on the second. The two
reports, without our row ids, are equal. The run and the worker share a Dagster instance
(SQLite in a temporary DAGSTER_HOME) and the billing database URL from the environment, as a
deployment's workers would. The worker's broker is a RabbitMQ vhost of its own when
`rabbitmqctl` may make one (so no other worker on the machine takes its tasks), else `/`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from billing_pipeline.localstripe_server import LocalStripe
from tests.conftest import CONTRACT, create_pg_database, drop_pg_database
from tests.contract.runner import cli_in_process, environment, report_multisets

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = CONTRACT / "scenarios" / "daily_autopay.json"
FIRST, LAST = "2026-10-31", "2026-11-03"
ID_KEYS = ("id", "document_id")


def _rabbitmqctl(*args: str) -> bool:
    tool = shutil.which("rabbitmqctl")
    if tool is None:
        return False
    done = subprocess.run([tool, *args], capture_output=True, timeout=60, check=False)
    return done.returncode == 0


@pytest.fixture
def broker() -> Iterator[str]:
    vhost = f"billing_test_{uuid.uuid4().hex[:8]}"
    if _rabbitmqctl("add_vhost", vhost) and _rabbitmqctl(
        "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"
    ):
        yield f"pyamqp://guest:guest@localhost:5672/{vhost}"
        _rabbitmqctl("delete_vhost", vhost)
    else:
        yield "pyamqp://guest:guest@localhost:5672//"


@pytest.fixture
def loaded(tmp_path: Path) -> Iterator[tuple[dict[str, str], dict[str, str]]]:
    """Two databases with the scenario loaded, each with its environment."""
    urls = [create_pg_database(migrated=True), create_pg_database(migrated=True)]
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    try:
        with LocalStripe() as stripe_server:
            envs = []
            for i, url in enumerate(urls):
                env = {
                    "BILLING_DATABASE_URL": url,
                    "STRIPE_API_KEY": "sk_test_billing_pipeline",
                    "STRIPE_API_BASE": stripe_server.url,
                    "DAGSTER_HOME": str(home),
                    "BILLING_DATA_DIR": str(tmp_path / f"data{i}"),
                }
                done = cli_in_process(env, "scenario", "load", str(SCENARIO))
                assert done.returncode == 0, done.stderr + done.stdout
                envs.append(env)
            yield envs[0], envs[1]
    finally:
        for url in urls:
            drop_pg_database(url)


def _run_config(broker: str | None) -> dict[str, object]:
    until = "2026-11-05"  # every step of the range is due on the logical clock
    config: dict[str, object] = {
        "loggers": {"console": {"config": {"log_level": "WARNING"}}},
        "resources": {"clock": {"config": {"mode": "logical", "until_date": until}}},
    }
    if broker is not None:
        config["execution"] = {"config": {"broker": broker, "backend": "rpc://"}}
    return config


def _tags() -> dict[str, str]:
    from dagster._core.storage.tags import (
        ASSET_PARTITION_RANGE_END_TAG,
        ASSET_PARTITION_RANGE_START_TAG,
    )

    return {ASSET_PARTITION_RANGE_START_TAG: FIRST, ASSET_PARTITION_RANGE_END_TAG: LAST}


def _worker(env: dict[str, str], broker: str, log: Path) -> subprocess.Popen[bytes]:
    """A Celery worker of the dagster app on `broker`, two processes, importing this
    worktree's code."""
    config = log.parent / "dagster_celery_config.py"
    config.write_text(f"broker_url = {broker!r}\nresult_backend = 'rpc://'\n")
    worker_env = {
        **os.environ,
        **env,
        "PYTHONPATH": os.pathsep.join([str(log.parent), str(ROOT)]),
    }
    with log.open("wb") as out:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "dagster_celery.app",
                "worker",
                "-Q",
                "dagster",
                "--concurrency",
                "2",
                "--loglevel",
                "WARNING",
            ],
            env=worker_env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def test_nightly_job_on_celery_bills_as_in_process(
    loaded: tuple[dict[str, str], dict[str, str]], broker: str, tmp_path: Path
) -> None:
    import dagster as dg

    from billing_pipeline.db.engine import dispose_engines
    from billing_pipeline.definitions import defs
    from tests.integration.celery_job import celery_nightly_job

    in_process_env, celery_env = loaded
    with environment(in_process_env), dg.DagsterInstance.get() as instance:
        ran = defs.resolve_job_def("nightly_billing_job").execute_in_process(
            instance=instance, run_config=_run_config(None), tags=_tags()
        )
        assert ran.success
    dispose_engines()
    expected = cli_in_process(in_process_env, "report", "--json")

    worker = _worker(celery_env, broker, tmp_path / "worker.log")
    try:
        with environment(celery_env), dg.DagsterInstance.get() as instance:
            result = dg.execute_job(
                dg.build_reconstructable_job(
                    "tests.integration.celery_job", celery_nightly_job.__name__
                ),
                instance=instance,
                run_config=_run_config(broker),
                tags=_tags(),
            )
            assert result.success, (tmp_path / "worker.log").read_text()[-3000:]
            steps = {
                e.step_key
                for e in result.all_events
                if e.event_type_value == "STEP_SUCCESS" and e.step_key
            }
            # Each step ran as a Celery task (the executor's own event per task).
            celery_events = [
                e
                for e in instance.all_logs(result.run_id)
                if e.dagster_event is not None
                and "celery" in (e.dagster_event.message or "").lower()
            ]
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        dispose_engines()
    assert {"eligible_sessions", "resolved_settings", "bills"} <= steps
    assert celery_events, "no step was handed to Celery"
    got = cli_in_process(celery_env, "report", "--json")
    assert expected.returncode == got.returncode == 0
    import json

    ours, theirs = json.loads(expected.stdout), json.loads(got.stdout)
    assert ours["bills"], "the nights billed nothing: the comparison would prove nothing"
    assert report_multisets(theirs, ID_KEYS) == report_multisets(ours, ID_KEYS)
