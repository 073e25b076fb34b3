"""Scenarios loaded and simulated once per test session and backend, through the real CLI, and
shared by the tests that only read the result (the public scenarios' reports, the PHI scan,
`explain`): a simulation of two months through a SQLite DAGSTER_HOME takes a minute, and three
files used to repeat the same ones.

Each command is a process of its own, forked from a server that has the project and Dagster
imported already (tests/integration/forked.py): `python -m billing_pipeline.cli` as a user runs
it, without 3-5 s of imports per command. The CLI's own tests start it from nothing.

The first test process (xdist worker) that needs a simulation makes it under a file lock in the
session's shared temporary folder; the others wait for it and read it from there. The
PostgreSQL databases are dropped when the whole session ends (`drop_shared_databases`, called
by the controlling process). Each simulation has a billing database and a Dagster home of its
own; `simulate` runs with Dagster's console logger at DEBUG so that the PHI scan reads every
engine event it printed. A test that reads a shared simulation must not write to it: those
tests only read the report, `explain` and the Dagster instance.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path
from typing import Any

from tests.conftest import create_pg_database, drop_pg_database
from tests.contract.runner import how
from tests.integration import forked

# The `simulate` command as the CLI runs it, with Dagster's console logger at DEBUG.
DEBUG_CLI = """
import billing_pipeline.simulate as simulate
simulate.QUIET_LOGS = {"loggers": {"console": {"config": {"log_level": "DEBUG"}}}}
from billing_pipeline.cli import main
main()
"""


def debug_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI with Dagster's console logger at DEBUG, in a forked process of its own."""
    return forked.run_code(DEBUG_CLI, args, env={**os.environ, **env})


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m billing_pipeline.cli *args` in a forked process of its own."""
    return forked.run_module("billing_pipeline.cli", args, env={**os.environ, **env})


def output_of(done: subprocess.CompletedProcess[str]) -> str:
    return f"{done.stdout}\n{done.stderr}"


@dataclass(frozen=True)
class Simulated:
    """A scenario loaded and simulated over its expectation's `_how` range."""

    env: dict[str, str]
    doc: dict[str, Any]
    first: date
    last: date
    cli_output: dict[str, str]  # "scenario load", "simulate (DEBUG)", "report --json"
    report: dict[str, Any]


PG_DATABASES = "pg_databases.txt"  # in the shared folder: the databases to drop at the end


class Simulations:
    """The simulations of a test session, made on first use, in `root` (shared by the session's
    processes)."""

    def __init__(self, root: Path, stripe_url: str) -> None:
        self.root = root
        self.stripe_url = stripe_url
        self.made: dict[tuple[str, str], Simulated] = {}

    def get(self, scenario: Path, backend: str, span: tuple[date, date] | None = None) -> Simulated:
        """The scenario simulated over `span`, or over its expectation's `_how` range."""
        key = (str(scenario), backend)
        if key not in self.made:
            self.made[key] = self._shared(scenario, backend, span)
        return self.made[key]

    def _shared(self, scenario: Path, backend: str, span: tuple[date, date] | None) -> Simulated:
        folder = self.root / f"{scenario.parent.name}-{scenario.stem}-{backend}"
        done = folder / "simulated.json"
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / f"{folder.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            if not done.exists():
                sim = self._simulate(scenario, backend, folder, span)
                done.write_text(json.dumps(asdict(sim), default=str))
        data = json.loads(done.read_text())
        data["first"], data["last"] = (date.fromisoformat(data[k]) for k in ("first", "last"))
        return Simulated(**data)

    def _simulate(
        self, scenario: Path, backend: str, folder: Path, span: tuple[date, date] | None
    ) -> Simulated:
        (folder / "dagster_home").mkdir(parents=True)
        if backend == "sqlite":
            url = f"sqlite:///{folder / 'billing.db'}"
        else:
            url = create_pg_database(migrated=True)
            with open(self.root / PG_DATABASES, "a") as listed:
                listed.write(url + "\n")
        env = {
            "BILLING_DATABASE_URL": url,
            "STRIPE_API_KEY": "sk_test_billing_pipeline",
            "STRIPE_API_BASE": self.stripe_url,
            "DAGSTER_HOME": str(folder / "dagster_home"),
            "BILLING_DATA_DIR": str(folder / "data"),
        }
        if span is None:
            first, last = how(json.loads(scenario.with_suffix(".expected.json").read_text()))
        else:
            first, last = (day.isoformat() for day in span)
        loaded = cli(env, "scenario", "load", str(scenario))
        assert loaded.returncode == 0, output_of(loaded)
        simulated = debug_cli(env, "simulate", "--from", first, "--to", last)
        assert simulated.returncode == 0, output_of(simulated)[-3000:]
        assert " - DEBUG - " in simulated.stderr, "the console logger did not print at DEBUG"
        reported = cli(env, "report", "--json")
        assert reported.returncode == 0, reported.stderr
        return Simulated(
            env,
            json.loads(scenario.read_text()),
            date.fromisoformat(first),
            date.fromisoformat(last),
            {
                "scenario load": output_of(loaded),
                "simulate (DEBUG)": output_of(simulated),
                "report --json": output_of(reported),
            },
            json.loads(reported.stdout),
        )


def drop_shared_databases(root: Path) -> None:
    """Drop the PostgreSQL databases of the session's shared simulations."""
    listed = root / PG_DATABASES
    if listed.exists():
        for url in listed.read_text().split():
            drop_pg_database(url)
