"""The production dagster.yaml loads, with its storage on PostgreSQL through dagster-postgres
(psycopg2) and the `billing_nightly` pool limited to one step at a time."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import create_pg_database, drop_pg_database

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import dagster as dg
from dagster_postgres import PostgresRunStorage
instance = dg.DagsterInstance.get()
assert isinstance(instance.run_storage, PostgresRunStorage), type(instance.run_storage)
config = instance.get_concurrency_config()
print(config.pool_config.default_pool_limit, config.run_queue_config.max_concurrent_runs)
print(instance.get_runs_count())
print(instance.run_monitoring_enabled, instance.run_monitoring_max_resume_run_attempts)
"""


@pytest.mark.slow
@pytest.mark.postgres
def test_production_instance_yaml_runs_on_postgres(tmp_path: Path) -> None:
    url = create_pg_database()
    try:
        shutil.copy(ROOT / "dagster.yaml", tmp_path / "dagster.yaml")
        done = subprocess.run(
            [sys.executable, "-c", PROBE],
            env={"DAGSTER_HOME": str(tmp_path), "DAGSTER_PG_URL": url, "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stdout.split() == ["1", "8", "0", "True", "0"]
    finally:
        drop_pg_database(url)
