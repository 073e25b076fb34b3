"""Processes for the AutoPay tests, forked from a server that has already imported Dagster and
the project: a driver (`python -m ...` or `python -c ...`) or a localstripe starts in
milliseconds instead of seconds of imports, and is still a real process of its own.

The server is a `multiprocessing` forkserver, one per pytest process, started on first use: a
fresh single-threaded interpreter that imports PRELOAD and nothing else (it opens no database
connection and no socket but its own; test_autopay_crashes.py checks). The pytest process itself
is never forked (it has threads and open connections). Each child then takes its environment
(exactly the one given, as `subprocess` would pass it), working directory and output files
before anything of the driver runs, runs the module or code as `python -m` / `python -c`
would, and exits as the interpreter would (SystemExit's code, 1 after an uncaught exception,
atexit handlers run). A SIGKILL, from BILLING_FAULT's hook (billing_pipeline/testing.py,
which kills os.getpid()) or from the test, kills that child only, and shows as exit code -9,
as for a subprocess.

`run_module` returns a `subprocess.CompletedProcess`; `start_module` / `start_code` a
`Forked`, which has the parts of `subprocess.Popen` the tests use.
"""

from __future__ import annotations

import atexit
import itertools
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.request
from collections.abc import Mapping, Sequence
from multiprocessing.context import ForkServerContext
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import TracebackType

ROOT = Path(__file__).resolve().parents[2]

# What the drivers import, up front: Dagster and the whole code location, what a run imports
# lazily on its first instance, storage and run (measured: ~300 modules, ~1.5 s), the CLI's lazy
# imports, and localstripe's server. Not the drivers' own __main__ modules (autopay_harness, the
# CLI): those run fresh in each child, as `python -m` runs them, in milliseconds on top of these.
# An unknown name here would be skipped silently by multiprocessing: test_autopay_crashes.py
# checks that every one is imported in a child.
PRELOAD = [
    "__main__",  # pytest's own script, imported once here rather than in every child
    "tests.gc_tuned",  # the test processes' garbage-collector thresholds, inherited by children
    "dagster",
    "dagster._core.debug",
    "dagster._core.definitions.repository_definition.repository_data_builder",
    "dagster._core.execution.plan.active",
    "dagster._core.execution.backfill",
    "dagster._core.execution.execute_in_process",
    "dagster._core.executor.in_process",
    "dagster._core.instance.factory",
    "dagster._core.instance.runs.run_domain",
    "dagster._core.launcher.sync_in_memory_run_launcher",
    "dagster._core.remote_representation",
    "dagster._core.secrets.env_file",
    "dagster._core.snap",
    "dagster._core.storage.event_log.in_memory",
    "dagster._core.storage.event_log.sqlite",
    "dagster._core.storage.local_compute_log_manager",
    "dagster._core.storage.noop_compute_log_manager",
    "dagster._core.storage.root",
    "dagster._core.storage.runs.in_memory",
    "dagster._core.storage.runs.sqlite",
    "dagster._core.storage.schedules.sqlite",
    "dagster._core.storage.migration.utils",
    "dagster._core.storage.sqlite_storage",
    "dagster._core.system_config.composite_descent",
    "dagster._core.workspace.context",
    "dagster._daemon",
    "sqlalchemy.dialects.mysql",
    "sqlalchemy.dialects.postgresql.psycopg2",
    "sqlalchemy.dialects.sqlite",
    "psycopg2.extras",
    "stripe._charge",
    "stripe._object_classes",
    "stripe._payment_intent",
    "stripe._payment_intent_service",
    "structlog",
    "tqdm",
    "rich.console",
    "rich.syntax",
    "rich.table",
    "rich.traceback",
    "watchdog.observers",
    "upath.implementations.local",
    "fsspec.implementations.local",
    "tzdata",
    "dotenv",
    "billing_pipeline.definitions",
    "billing_pipeline.simulate",
    "billing_pipeline.scenario.load",
    "billing_pipeline.services.explain",
    "billing_pipeline.db.report",
    "billing_pipeline.localstripe_server",
    "click",
    "aiohttp.web",
    "localstripe.server",
    # The expectations' checks (2 s of imports): every nightly run with rows to check needs
    # them (checks/expectations.py imports them on first use).
    "pandas",
    "great_expectations",
    "great_expectations.expectations",
    "great_expectations.datasource.fluent",
]


class _Server:
    """This process's forkserver (one per pytest process), started on first use."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.context: ForkServerContext | None = None
        self.outputs: Path | None = None  # the children's stdout and stderr files
        self.numbers = itertools.count(1)
        # Started and not seen ended: all killed before the server stops (it waits for them).
        self.live: set[Forked] = set()

    def start(self) -> tuple[ForkServerContext, Path]:
        with self.lock:
            if self.context is None or self.outputs is None:
                from multiprocessing import forkserver

                ctx = multiprocessing.get_context("forkserver")
                ctx.set_forkserver_preload(PRELOAD)
                forkserver.ensure_running()
                self.outputs = Path(tempfile.mkdtemp(prefix="forked-"))
                self.context = ctx
                atexit.register(shutdown)
            return self.context, self.outputs

    def stop(self) -> None:
        for child in list(self.live):
            child.kill()
            try:
                child.wait(30)
            except subprocess.TimeoutExpired:
                pass
        from multiprocessing import forkserver

        with self.lock:
            if self.context is not None:
                forkserver._forkserver._stop()  # type: ignore[attr-defined]  # private, no stub
                self.context = None
            if self.outputs is not None:
                shutil.rmtree(self.outputs, ignore_errors=True)
                self.outputs = None


_server = _Server()


def server_pid() -> int:
    """The forkserver's pid (for the check that it holds no connection and no thread)."""
    from multiprocessing import forkserver

    _server.start()
    pid = forkserver._forkserver._forkserver_pid  # type: ignore[attr-defined]  # private, no stub
    assert isinstance(pid, int)
    return pid


def shutdown() -> None:
    """Kill every child still running, stop the forkserver, remove the output files (at exit)."""
    _server.stop()


class Forked:
    """A child of the forkserver, with the parts of `subprocess.Popen` the tests use: pid,
    poll, wait, communicate, kill, send_signal, returncode; its stdout and stderr are files,
    read whole (`stdout_text`, `stderr_text`) while it runs or after."""

    def __init__(self, args: list[str], process: BaseProcess, stdout: Path, stderr: Path) -> None:
        self.args = args
        self._process = process
        self._stdout = stdout
        self._stderr = stderr
        self.returncode: int | None = None
        _server.live.add(self)

    @property
    def pid(self) -> int:
        assert self._process.pid is not None
        return self._process.pid

    def poll(self) -> int | None:
        if self.returncode is None:
            code = self._process.exitcode
            if code is not None:
                self.returncode = code
                self._process.close()
                _server.live.discard(self)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            self._process.join(timeout)
            if self.poll() is None:
                raise subprocess.TimeoutExpired(self.args, timeout or 0)
        assert self.returncode is not None
        return self.returncode

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        self.wait(timeout)
        return self.stdout_text(), self.stderr_text()

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def stdout_text(self) -> str:
        return self._stdout.read_text(errors="replace")

    def stderr_text(self) -> str:
        return self._stderr.read_text(errors="replace")

    def discard_output(self) -> None:
        """Remove the stdout and stderr files (once they are read, or of no more use)."""
        self._stdout.unlink(missing_ok=True)
        self._stderr.unlink(missing_ok=True)

    def completed(self) -> subprocess.CompletedProcess[str]:
        assert self.returncode is not None
        return subprocess.CompletedProcess(
            self.args, self.returncode, self.stdout_text(), self.stderr_text()
        )

    def __enter__(self) -> Forked:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.poll() is None:
            self.kill()
            self.wait(30)


def _start(kind: str, what: str, argv: Sequence[str], env: Mapping[str, str], cwd: Path) -> Forked:
    ctx, outputs = _server.start()
    n = next(_server.numbers)
    out, err = outputs / f"{n}.out", outputs / f"{n}.err"
    out.touch()  # readable at once, before the child opens them
    err.touch()
    process = ctx.Process(
        target=_child,
        args=(kind, what, list(argv), dict(env), str(cwd), str(out), str(err)),
        name=f"forked-{n}",
        daemon=True,  # whatever is left running when pytest exits is ended with it
    )
    process.start()
    args = [sys.executable, "-m" if kind == "module" else "-c", what, *argv]
    return Forked(args, process, out, err)


def start_module(
    module: str, argv: Sequence[str], *, env: Mapping[str, str], cwd: Path = ROOT
) -> Forked:
    """`python -m module *argv` with exactly `env`, forked."""
    return _start("module", module, argv, env, cwd)


def start_code(
    code: str, argv: Sequence[str] = (), *, env: Mapping[str, str] | None = None, cwd: Path = ROOT
) -> Forked:
    """`python -c code *argv` with exactly `env` (default: this process's), forked."""
    return _start("code", code, argv, dict(os.environ) if env is None else env, cwd)


def run_module(
    module: str,
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path = ROOT,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """As `subprocess.run([python, -m, module, *argv], env=env, capture_output=True, text=True,
    timeout=timeout)`: killed, and TimeoutExpired raised, past the timeout."""
    return _run(start_module(module, argv, env=env, cwd=cwd), timeout)


def run_code(
    code: str, argv: Sequence[str], *, env: Mapping[str, str], timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """As `subprocess.run([python, -c, code, *argv], ...)`, like `run_module`."""
    return _run(start_code(code, argv, env=env), timeout)


def _run(child: Forked, timeout: float) -> subprocess.CompletedProcess[str]:
    with child:
        try:
            child.wait(timeout)
            return child.completed()
        finally:
            if child.poll() is not None:
                child.discard_output()


# --- In the child -------------------------------------------------------------------------------


def _child(
    kind: str, what: str, argv: list[str], env: dict[str, str], cwd: str, out: str, err: str
) -> None:
    """Runs in the forked child: its world first (environment, directory, output), then the
    driver, then the interpreter's own exit (never back into multiprocessing's)."""
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    for fd, path in ((1, out), (2, err)):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(target, fd)
        os.close(target)
    # sys.stdout/err write to fds 1 and 2, now the files: block-buffered out, line-buffered err,
    # as for a subprocess whose output is a pipe.
    code = 0
    try:
        if kind == "module":
            import runpy

            sys.argv = [what, *argv]
            sys.modules.pop(what, None)  # as for `python -m`: not imported before it runs
            runpy.run_module(what, run_name="__main__", alter_sys=True)
        else:
            sys.argv = ["-c", *argv]
            main = type(sys)("__main__")
            sys.modules["__main__"] = main
            exec(compile(what, "<string>", "exec"), main.__dict__)
    except SystemExit as exc:
        code = _exit_code(exc)
    except BaseException:
        traceback.print_exc()
        code = 1
    threading._shutdown()  # type: ignore[attr-defined]  # what the interpreter does at exit
    try:
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # as at interpreter exit: nothing left to tell
                pass
        os._exit(code)


def _exit_code(exc: SystemExit) -> int:
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    sys.stderr.write(f"{exc.code}\n")
    return 1


# --- localstripe, forked, from a snapshot ------------------------------------------------------

# argv: port, latency in ms, the snapshot to start from ("" for none), where to write one.
LOCALSTRIPE = """
import pickle, sys
from aiohttp import web
from localstripe import resources
from localstripe.server import app
from billing_pipeline.localstripe_server import serve

port, latency_ms, start_from, dump_to = int(sys.argv[1]), int(sys.argv[2]), *sys.argv[3:5]
if start_from:
    with open(start_from, "rb") as f:
        resources.store.update(pickle.load(f))  # dict.update: no dump to disk

async def snapshot(request):
    with open(dump_to, "wb") as f:
        pickle.dump(dict(resources.store), f, protocol=pickle.HIGHEST_PROTOCOL)
    return web.Response()

app.router.add_post("/_test/snapshot", snapshot)
serve(port, latency_ms)
"""


class ForkedLocalStripe:
    """localstripe (billing_pipeline.localstripe_server's, on loopback, no pickle), forked:
    optionally starting from a snapshot of another one's store (`snapshot_from`), and able to
    write its own (`snapshot(path)`). A context manager."""

    def __init__(self, latency_ms: int = 0, snapshot_from: Path | None = None) -> None:
        from billing_pipeline.localstripe_server import free_port

        self.port = free_port()
        self.latency_ms = latency_ms
        self.snapshot_from = snapshot_from
        self._dump_to = Path(tempfile.mkdtemp(prefix="localstripe-")) / "store.pickle"
        self.process: Forked | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> ForkedLocalStripe:
        snapshot = str(self.snapshot_from or "")
        argv = [str(self.port), str(self.latency_ms), snapshot, str(self._dump_to)]
        self.process = start_code(LOCALSTRIPE, argv)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"localstripe exited with code {self.process.returncode}: "
                    f"{self.process.stderr_text()[-2000:]}"
                )
            try:
                req = urllib.request.Request(
                    f"{self.url}/v1/customers?limit=1",
                    headers={"Authorization": "Bearer sk_test_local"},
                )
                with urllib.request.urlopen(req, timeout=2):
                    return self
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"localstripe did not answer on {self.url} within {timeout}s")

    def snapshot(self, path: Path) -> Path:
        """Everything in this localstripe now (customers, cards, intents), written to path."""
        req = urllib.request.Request(
            f"{self.url}/_test/snapshot",
            method="POST",
            data=b"",
            headers={"Authorization": "Bearer sk_test_local"},  # localstripe wants a key
        )
        with urllib.request.urlopen(req, timeout=30):
            pass
        shutil.move(self._dump_to, path)
        return path

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
            self.process.discard_output()
            self.process = None
        shutil.rmtree(self._dump_to.parent, ignore_errors=True)

    def __enter__(self) -> ForkedLocalStripe:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
