"""Kill the process (SIGKILL, not an exception) at each point of a charge, several times, and
re-run: every re-run ends with exactly one succeeded PaymentIntent per charge in localstripe
and the right bill states.

The kill comes from the test-only hook in billing_pipeline/testing.py, which services/autopay.py
calls (`BILLING_FAULT=<point>@<n>`: the n-th time the process reaches the point). The nights run
through the production job (`nightly_chain_job`) in a process of their own (the harness's
driver, forked from a server that has Dagster imported: tests/integration/forked.py), and the
re-runs come at once with the default settings: the killed run's claim lock died with it.
"""

from __future__ import annotations

import os
import signal
import subprocess
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from billing_pipeline.localstripe_server import LocalStripe
from billing_pipeline.testing import FAULT_ENV, FaultPoint
from tests.gc_tuned import GC_THRESHOLD
from tests.integration import forked
from tests.integration.autopay_harness import (
    FIRST_NIGHT,
    assert_charged_once,
    driver_env,
    iter_json_lines,
    ledger,
    load,
    many_clients,
    run_driver,
)

CLIENTS = 4
# Night 1 is killed at its first charge, night 2 at its second and then again while it
# recovers: three kills per point, each re-run at once.
NIGHTS = [FIRST_NIGHT + timedelta(days=i) for i in range(2)]


def drive(env: dict[str, str], night: date) -> subprocess.CompletedProcess[str]:
    return run_driver(env, night, night)


def figures_of(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    (line,) = list(iter_json_lines(done.stdout))
    assert line["success"], done.stderr[-3000:]
    return line["figures"].get("acct-ap", {})


def night_bills_paid(engine: Engine, stripe_url: str, up_to: date) -> None:
    book = ledger(engine, stripe_url)
    assert [a.id for a in book.attempts if a.status == "pending"] == []
    assert {b.status for b in book.bills if b.night <= up_to} == {"paid"}
    assert len(book.attempts_with("succeeded")) == CLIENTS * (NIGHTS.index(up_to) + 1)
    assert_charged_once(book)


def state_after_kill(engine: Engine, stripe_url: str, night: date) -> tuple[int, int, int]:
    """(pending attempts, succeeded attempts, succeeded PaymentIntents) of the night."""
    book = ledger(engine, stripe_url)
    mine = [a for a in book.attempts if a.night == night]
    ids = {str(a.id) for a in mine}
    return (
        sum(a.status == "pending" for a in mine),
        sum(a.status == "succeeded" for a in mine),
        sum(i.metadata["attempt_id"] in ids for i in book.succeeded_intents()),
    )


@pytest.mark.slow
@pytest.mark.parametrize("point", list(FaultPoint), ids=[p.value for p in FaultPoint])
def test_killed_at_each_point_every_rerun_charges_exactly_once(
    point: FaultPoint,
    engine: Engine,
    database_url: str,
    localstripe: LocalStripe,
    tmp_path: Path,
) -> None:
    load(engine, many_clients(CLIENTS, len(NIGHTS)), tmp_path, localstripe.url)
    env = driver_env(database_url, localstripe.url)
    for k, night in enumerate(NIGHTS, start=1):
        # Killed at the k-th time the run reaches the point: a different client each night.
        killed = drive({**env, FAULT_ENV: f"{point.value}@{k}"}, night)
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
        pending, recorded, charged = state_after_kill(engine, localstripe.url, night)
        assert pending >= 1  # the kill left work half done...
        if point == FaultPoint.BEFORE_STRIPE:
            assert charged <= k - 1  # ...the k-th charge never left...
        elif point == FaultPoint.AFTER_STRIPE_SUCCESS:
            assert charged > recorded  # ...Stripe charged what we never wrote...
        else:
            assert recorded >= k  # ...or the k-th outcome was written, the rest not.
        if k == 2:
            # Killed again while recovering: the re-run's own first charge or outcome.
            again = drive({**env, FAULT_ENV: f"{point.value}@1"}, night)
            assert again.returncode in (0, -signal.SIGKILL), again.stderr[-3000:]
        final = drive(env, night)
        assert final.returncode == 0, final.stderr[-3000:]
        figures = figures_of(final)
        if point == FaultPoint.AFTER_STRIPE_SUCCESS and k != 2:
            assert figures.get("reconciled_succeeded", 0) >= 1  # found in Stripe, not resent
        night_bills_paid(engine, localstripe.url, night)
    # Once settled, a further run of the nights does nothing at all.
    assert figures_of(drive(env, NIGHTS[-1])).get("attempts", 0) == 0
    night_bills_paid(engine, localstripe.url, NIGHTS[-1])


def _inet_sockets(pid: int) -> set[int]:
    """The inodes of the TCP/UDP sockets process `pid` has open."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except FileNotFoundError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[len("socket:[") : -1]))
    inet = set()
    for table in ("tcp", "tcp6", "udp", "udp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            inet.add(int(line.split()[9]))
    return inodes & inet


@pytest.mark.slow
def test_drivers_fork_from_a_clean_server_and_a_kill_ends_only_the_driver() -> None:
    """The server the drivers fork from has imported every module it should (multiprocessing
    skips a name it cannot import, silently), created no engine, passes on the test processes'
    garbage-collector thresholds (tests/gc_tuned.py), runs a single thread and holds
    no TCP socket (no engine or connection crosses a fork); a driver's SIGKILL shows as -9 and
    the server lives on."""
    probe = forked.start_code(
        "import gc, sys\n"
        "from billing_pipeline.db import engine\n"
        "print(sorted(m for m in sys.argv[1:] if m not in sys.modules), len(engine._engines),\n"
        "      gc.get_threshold())",
        forked.PRELOAD,
    )
    assert probe.communicate(timeout=60) == (f"[] 0 {GC_THRESHOLD}\n", "")
    assert probe.returncode == 0
    server = forked.server_pid()
    status = Path(f"/proc/{server}/status").read_text()
    assert "\nThreads:\t1\n" in status, status
    assert _inet_sockets(server) == set()
    killed = forked.start_code("import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    assert killed.wait(60) == -signal.SIGKILL
    os.kill(server, 0)  # still there
    assert forked.server_pid() == server
