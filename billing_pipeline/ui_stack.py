"""`billing-pipeline ui`: the Dagster UI and daemon on an instance with everything they need.

By default the demo's instance (data/demo: its SQLite billing database, its Dagster home with
the `billing_nightly` pool's slot) and its local Stripe, started again with the customers and
cards the demo registered; with `--from-env`, the instance and database of the environment
(DAGSTER_HOME, BILLING_DATABASE_URL, STRIPE_API_KEY...), as production's processes run. Both
processes are started on their own (`dagster dev` started from a script ignores signals) and
stopped together on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from billing_pipeline.config import data_dir, project_root

POOL = "billing_nightly"
DEMO_STRIPE_KEY = "sk_test_demo"


class UiSetupError(Exception):
    """The UI cannot start on this instance (the message says why and what to do)."""


@dataclass(frozen=True)
class UiInstance:
    dagster_home: Path
    database_url: str
    demo: bool


def demo_instance() -> UiInstance:
    folder = data_dir() / "demo"
    return UiInstance(folder / "dagster_home", f"sqlite:///{folder / 'billing.db'}", demo=True)


def env_instance(environ: Mapping[str, str]) -> UiInstance:
    from billing_pipeline.config import DATABASE_URL_ENV, default_database_url

    home = environ.get("DAGSTER_HOME")
    if not home:
        raise UiSetupError(
            "DAGSTER_HOME is not set: --from-env runs on the instance of the environment "
            "(see README, 'What the processes need in their environment')"
        )
    return UiInstance(
        Path(home), environ.get(DATABASE_URL_ENV) or default_database_url(), demo=False
    )


def check_instance(ui: UiInstance) -> None:
    if not (ui.dagster_home / "dagster.yaml").is_file():
        hint = (
            "run the demo first: ./scripts/demo.sh"
            if ui.demo
            else "copy the project's dagster.yaml there (README, 'The Dagster instance')"
        )
        raise UiSetupError(f"no Dagster instance at {ui.dagster_home}: {hint}")


def ensure_pool_slots(dagster_home: Path) -> int:
    """Give the nightly assets' pool its slot when the instance sets no limit for it (the UI
    warns about a pool without one); returns the pool's limit."""
    import dagster as dg

    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        storage = instance.event_log_storage
        info = storage.get_concurrency_info(POOL)
        if info.limit is None:
            storage.set_concurrency_slots(POOL, 1)
            return 1
        return int(info.limit)


def process_env(base: Mapping[str, str], ui: UiInstance, stripe_base: str | None) -> dict[str, str]:
    """The environment of the webserver and the daemon (and so of their runs)."""
    env = {**base, "DAGSTER_HOME": str(ui.dagster_home), "BILLING_DATABASE_URL": ui.database_url}
    if stripe_base is not None:  # the demo's local Stripe
        env["STRIPE_API_KEY"] = DEMO_STRIPE_KEY
        env["STRIPE_API_BASE"] = stripe_base
    return env


def commands(host: str, port: int) -> list[list[str]]:
    """dagster-webserver and dagster-daemon of this venv, on workspace.yaml."""
    bin_dir = Path(sys.executable).parent
    return [
        [str(bin_dir / "dagster-webserver"), "-h", host, "-p", str(port), "-w", "workspace.yaml"],
        [str(bin_dir / "dagster-daemon"), "run", "-w", "workspace.yaml"],
    ]


def stop(procs: list[subprocess.Popen[bytes]], grace_seconds: float = 5) -> None:
    """SIGTERM to each process's own group (its code server and the runs it launched: a run
    still going is stopped too, and run monitoring marks it failed), all at once; SIGKILL to the
    groups still there after `grace_seconds`."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for proc in procs:
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace_seconds
        while time.monotonic() < deadline and any(p.poll() is None for p in procs):
            time.sleep(0.2)
    for proc in procs:
        proc.wait()


@contextmanager
def started(
    cmds: list[list[str]], env: Mapping[str, str]
) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Each command in a process group of its own, from the project root; all stopped at the
    end of the block."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for cmd in cmds:  # one by one: those started are stopped if a later one fails
            procs.append(  # noqa: PERF401
                subprocess.Popen(cmd, cwd=project_root(), env=dict(env), start_new_session=True)
            )
        yield procs
    finally:
        stop(procs)


def serve(ui: UiInstance, host: str, port: int, say: Callable[[str], None]) -> int:
    """Start the stack and wait until Ctrl-C, SIGTERM or one of the processes ends."""
    from billing_pipeline.localstripe_server import LocalStripe

    check_instance(ui)
    limit = ensure_pool_slots(ui.dagster_home)
    with ExitStack() as stack:
        stripe_base = None
        if ui.demo:
            store = ui.dagster_home.parent / "localstripe.pickle"
            stripe = stack.enter_context(LocalStripe(store=str(store)))
            stripe_base = stripe.url
            say(f"local Stripe (the demo's customers and cards) on {stripe.url}")
        elif not os.environ.get("STRIPE_API_KEY"):
            say(
                "STRIPE_API_KEY is not set: bills, superbills and statements run; AutoPay and "
                "the reconciliation fail, naming it, until it is set"
            )
        env = process_env(os.environ, ui, stripe_base)
        procs = stack.enter_context(started(commands(host, port), env))
        say(
            f"Dagster UI on http://{host}:{port} (instance {ui.dagster_home}, pool {POOL}: "
            f"{limit} slot); the daemon runs schedules, sensors, backfills. Ctrl-C stops both."
        )
        stopping: list[int] = []

        def on_signal(signum: int, _frame: object) -> None:
            stopping.append(signum)

        previous = signal.signal(signal.SIGTERM, on_signal)
        try:
            while not stopping and all(p.poll() is None for p in procs):
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        finally:
            signal.signal(signal.SIGTERM, previous)
        ended = [p for p in procs if p.poll() is not None]
        return 1 if ended and not stopping else 0
    return 0
