"""Run a scenario through the CLI exactly as the contract says: load, simulate, report."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.conftest import CONTRACT, create_pg_database, drop_pg_database

REPORT_LISTS = ("bills", "autopay_attempts", "superbills", "statements", "deliveries", "flags")


def cli(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "billing_pipeline.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        check=False,
        text=True,
        timeout=timeout,
    )


def how(expected: dict[str, Any]) -> tuple[str, str]:
    words = shlex.split(expected["_how"])
    return words[words.index("--from") + 1], words[words.index("--to") + 1]


def run_scenario(env: dict[str, str], scenario: Path, expected_path: Path) -> dict[str, Any]:
    """Load, simulate as `_how` says, return the report; asserts each command succeeded."""
    expected = json.loads(expected_path.read_text())
    first, last = how(expected)
    loaded = cli(env, "scenario", "load", str(scenario))
    assert loaded.returncode == 0, loaded.stderr + loaded.stdout
    simulated = cli(env, "simulate", "--from", first, "--to", last)
    assert simulated.returncode == 0, simulated.stderr[-3000:] + simulated.stdout
    reported = cli(env, "report", "--json")
    assert reported.returncode == 0, reported.stderr
    return json.loads(reported.stdout)


def check(expected_path: Path, report: dict[str, Any], tmp: Path) -> str:
    """check_report.py's verdict ('' when it passes)."""
    report_path = tmp / "report.json"
    report_path.write_text(json.dumps(report))
    done = subprocess.run(
        [sys.executable, str(CONTRACT / "check_report.py"), str(expected_path), str(report_path)],
        capture_output=True,
        check=False,
        text=True,
    )
    return "" if done.returncode == 0 else done.stdout


def report_of(env: dict[str, str]) -> dict[str, Any]:
    """`report --json`, parsed; asserts it succeeded."""
    done = cli(env, "report", "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def report_multisets(report: dict[str, Any], leave_out: Iterable[str]) -> dict[str, Counter[str]]:
    """The six lists as multisets of canonical JSON items without the keys `leave_out` (our own
    ids differ between two databases)."""
    drop = set(leave_out)
    return {
        name: Counter(
            json.dumps({k: v for k, v in item.items() if k not in drop}, sort_keys=True)
            for item in report[name]
        )
        for name in REPORT_LISTS
    }


@contextmanager
def second_env(env: dict[str, str], tmp_path: Path) -> Iterator[dict[str, str]]:
    """A second, empty billing database on the same backend, with its own Dagster home."""
    home = tmp_path / "dagster_home_2"
    home.mkdir()
    if env["BILLING_DATABASE_URL"].startswith("sqlite"):
        url = f"sqlite:///{tmp_path / 'billing_2.db'}"
        yield {**env, "BILLING_DATABASE_URL": url, "DAGSTER_HOME": str(home)}
        return
    url = create_pg_database()
    try:
        yield {**env, "BILLING_DATABASE_URL": url, "DAGSTER_HOME": str(home)}
    finally:
        drop_pg_database(url)
