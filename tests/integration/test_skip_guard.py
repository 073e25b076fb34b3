"""The suite's guard: a skipped test fails the run (a PostgreSQL test that would skip in CI is
a failure), unless BILLING_ALLOW_SKIPS is set on purpose."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # a subprocess pytest run: not for the fast tier

ROOT = Path(__file__).resolve().parents[2]


def run_pytest(tmp_path: Path, allow: bool) -> subprocess.CompletedProcess[str]:
    test = tmp_path / "test_skipping.py"
    test.write_text(
        "import pytest\n\n"
        "def test_runs():\n    assert True\n\n"
        "def test_skips():\n    pytest.skip('PostgreSQL is not answering')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "BILLING_ALLOW_SKIPS"}
    if allow:
        env["BILLING_ALLOW_SKIPS"] = "1"
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "tests.conftest",
            "-p",
            "no:xdist",
            "-p",
            "no:cacheprovider",
            str(test),
        ],
        cwd=ROOT,
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_skipped_test_fails_the_run(tmp_path: Path) -> None:
    result = run_pytest(tmp_path, allow=False)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 test(s) skipped; failing the run" in result.stdout


def test_skips_pass_only_when_allowed_on_purpose(tmp_path: Path) -> None:
    result = run_pytest(tmp_path, allow=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed, 1 skipped" in result.stdout
