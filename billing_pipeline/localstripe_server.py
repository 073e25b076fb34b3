"""Run localstripe the way this project needs it: on 127.0.0.1 only, with nothing written to
/tmp/localstripe.pickle (it would be slow as the store grows and shared by every instance on
the machine), optionally behind a fixed latency per request (for the AutoPay benchmark).

`python -m billing_pipeline.localstripe_server --port N [--latency-ms M] [--store FILE]` runs
one in the foreground; `LocalStripe` starts and stops one in a subprocess. With `--store` the
store is loaded from FILE at start and written there when the server stops (the demo keeps its
local Stripe's customers and cards this way, so `billing-pipeline ui` can charge them later).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time
import urllib.request
from types import TracebackType


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve(port: int, latency_ms: int = 0, store: str | None = None) -> None:
    try:
        from aiohttp import web
        from aiohttp.typedefs import Handler
        from localstripe import resources, server
    except ImportError:
        sys.exit(
            "localstripe is not installed: it is the demo's and the tests' extra "
            "(pip install -e '.[localstripe]', or scripts/setup.sh)"
        )

    # No pickle: keep the store in memory only.
    resources.Store.dump_to_disk = lambda self: None
    resources.Store.try_load_from_disk = lambda self: None

    app = server.app
    if store:
        import pickle
        from pathlib import Path

        path = Path(store)
        if path.is_file():
            with path.open("rb") as f:
                resources.store.update(pickle.load(f))  # our own file, written below

        async def save(_app: web.Application) -> None:
            tmp = path.with_suffix(".tmp")
            with tmp.open("wb") as f:
                pickle.dump(dict(resources.store), f, protocol=pickle.HIGHEST_PROTOCOL)
            tmp.replace(path)

        app.on_cleanup.append(save)
    if latency_ms:

        @web.middleware
        async def slow(request: web.Request, handler: Handler) -> web.StreamResponse:
            await asyncio.sleep(latency_ms / 1000)
            return await handler(request)

        app.middlewares.insert(0, slow)

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    web.run_app(app, sock=sock, access_log=None, print=None)


class LocalStripe:
    """A localstripe subprocess on loopback; use as a context manager."""

    def __init__(
        self, port: int | None = None, latency_ms: int = 0, store: str | None = None
    ) -> None:
        self.port = port or free_port()
        self.latency_ms = latency_ms
        self.store = store
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> LocalStripe:
        cmd = [
            sys.executable,
            "-m",
            "billing_pipeline.localstripe_server",
            "--port",
            str(self.port),
            "--latency-ms",
            str(self.latency_ms),
            *(["--store", self.store] if self.store else []),
        ]
        self.process = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy()
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"localstripe exited with code {self.process.returncode}")
            try:
                req = urllib.request.Request(
                    f"{self.url}/v1/customers?limit=1",
                    headers={"Authorization": "Bearer sk_test_local"},
                )
                with urllib.request.urlopen(req, timeout=2):
                    return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"localstripe did not answer on {self.url} within {timeout}s")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> LocalStripe:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8420)
    parser.add_argument("--latency-ms", type=int, default=0)
    parser.add_argument("--store", default=None, help="Load the store from here, save it on stop.")
    args = parser.parse_args()
    serve(args.port, args.latency_ms, args.store)


if __name__ == "__main__":
    main()
