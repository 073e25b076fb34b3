"""The Stripe key comes only from the environment (STRIPE_API_KEY, read when Stripe is called)
and never reaches logs, run config, metadata or Stripe metadata; neither does a client's name or
email."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest
from sqlalchemy import Engine

from billing_pipeline.definitions import defs
from billing_pipeline.localstripe_server import LocalStripe
from tests.integration.autopay_harness import (
    FIRST_NIGHT,
    ROOT,
    driver_command,
    driver_env,
    ledger,
    load,
    many_clients,
)

pytestmark = pytest.mark.slow  # Stripe, Dagster runs and drivers: not for the fast tier


def test_the_payments_resource_takes_its_key_from_an_env_var() -> None:
    payments = defs.resources["payments"]
    assert payments.api_key is None  # nothing in the config: read from the variable at use
    assert payments.api_key_env_var == "STRIPE_API_KEY"


@pytest.mark.slow
def test_no_key_and_no_name_in_dagster_storage_or_stripe_metadata(
    engine: Engine, database_url: str, localstripe: LocalStripe, tmp_path: Path
) -> None:
    load(engine, many_clients(2, 1), tmp_path, localstripe.url)
    secret = f"sk_test_{uuid.uuid4().hex}"
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {
        **driver_env(database_url, localstripe.url),
        "STRIPE_API_KEY": secret,
        "DAGSTER_HOME": str(home),
    }
    # A real `python -m` subprocess, on purpose: the one test that runs the driver as its
    # command line, end to end (the others fork it from a pre-imported server, forked.py).
    done = subprocess.run(
        driver_command(FIRST_NIGHT, FIRST_NIGHT),
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert '"outcome_succeeded": 2' in done.stdout
    assert secret not in done.stdout + done.stderr
    stored = [p for p in home.rglob("*") if p.is_file()]
    assert any(p.suffix == ".db" for p in stored)  # runs and events were written here
    for path in stored:
        data = path.read_bytes()
        assert secret.encode() not in data, path
        assert b"cl-00@example.com" not in data and b"Test Cl-00" not in data, path
    for intent in ledger(engine, localstripe.url).intents:
        values = " ".join(intent.metadata.values())
        assert "example.com" not in values and "Test" not in values
