"""Run a scenario through the CLI exactly as the contract says: load, simulate, report."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.conftest import CONTRACT


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
