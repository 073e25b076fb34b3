"""Run a scenario through the CLI exactly as the contract says: load, simulate, report."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Any

from tests.conftest import CONTRACT, create_pg_database, drop_pg_database

Runner = Callable[..., subprocess.CompletedProcess[str]]
REPORT_LISTS = ("bills", "autopay_attempts", "superbills", "statements", "deliveries", "flags")


def cli(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """The CLI in a process of its own, exactly as a user runs it (3-4 s of imports each)."""
    return subprocess.run(
        [sys.executable, "-m", "billing_pipeline.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        check=False,
        text=True,
        timeout=timeout,
    )


def cli_in_process(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """The same CLI command run in this process (its imports already paid for), with `env`
    over the environment for its duration; the result has the shape of `cli`'s. For our own
    scenarios and tests that read the CLI's output; the public scenarios and the CLI's own
    tests use `cli`, a real process."""
    from click.testing import CliRunner

    from billing_pipeline.cli import main
    from billing_pipeline.db.engine import dispose_engines

    try:
        done = CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)
    finally:
        dispose_engines()  # as at the end of a process: no connection outlives the command
    return subprocess.CompletedProcess(list(args), done.exit_code, done.stdout, done.stderr)


@contextmanager
def environment(env: dict[str, str]) -> Iterator[None]:
    """`env` over os.environ for the block, then the environment as it was."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def simulate_in_process(env: dict[str, str], first: str, last: str) -> list[str]:
    """`simulate --from first --to last` as the CLI does it, in this process and on an
    in-memory Dagster instance (a SQLite DAGSTER_HOME spends most of a simulation writing
    events: the CLI's own tests and the public scenarios use one). The failed checks, if any
    run failed."""
    import dagster as dg

    from billing_pipeline.db.engine import dispose_engines
    from billing_pipeline.simulate import simulate

    with environment(env), dg.DagsterInstance.ephemeral() as instance:
        try:
            result = simulate(date.fromisoformat(first), date.fromisoformat(last), instance)
        finally:
            dispose_engines()
    return [] if result.success else result.problems or result.failed


def how(expected: dict[str, Any]) -> tuple[str, str]:
    words = shlex.split(expected["_how"])
    return words[words.index("--from") + 1], words[words.index("--to") + 1]


def run_scenario(
    env: dict[str, str], scenario: Path, expected_path: Path, *, in_process: bool = False
) -> dict[str, Any]:
    """Load, simulate as `_how` says, return the report; asserts each command succeeded.
    `in_process`: the same commands in this process, simulate on an in-memory instance."""
    expected = json.loads(expected_path.read_text())
    first, last = how(expected)
    run = cli_in_process if in_process else cli
    loaded = run(env, "scenario", "load", str(scenario))
    assert loaded.returncode == 0, loaded.stderr + loaded.stdout
    if in_process:
        assert simulate_in_process(env, first, last) == []
    else:
        simulated = cli(env, "simulate", "--from", first, "--to", last)
        assert simulated.returncode == 0, simulated.stderr[-3000:] + simulated.stdout
    reported = run(env, "report", "--json")
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


def report_of(env: dict[str, str], *, run: Runner = cli) -> dict[str, Any]:
    """`report --json`, parsed; asserts it succeeded."""
    done = run(env, "report", "--json")
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
    url = create_pg_database(migrated=True)
    try:
        yield {**env, "BILLING_DATABASE_URL": url, "DAGSTER_HOME": str(home)}
    finally:
        drop_pg_database(url)
