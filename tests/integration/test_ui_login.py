"""The Dagster UI behind a login (billing_pipeline/ui_proxy.py, deploy/README.md): two real
dagster-webservers on loopback (a writable one for analysts, a --read-only one for finance) and
the proxy in front of them, each in a process of its own, started as the README says."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from billing_pipeline.localstripe_server import free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SECRET = "test-secret-" + "x" * 40
REPOSITORIES = "{ repositoriesOrError { ... on RepositoryConnection { nodes { name } } } }"
LAUNCH_BACKFILL = """
mutation LaunchBackfill($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on Error { message }
  }
}"""
BACKFILL = {"params": {"assetSelection": [{"path": ["bills"]}], "partitionNames": ["2026-11-02"]}}


def _wait(check, what: str, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{what} did not come up within {seconds} s")


def _loaded(base: str) -> bool:
    answer = requests.post(f"{base}/graphql", json={"query": REPOSITORIES}, timeout=10)
    nodes = answer.json().get("data", {}).get("repositoriesOrError", {}).get("nodes")
    return bool(nodes)


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The proxy's base URL, both webservers loaded behind it; users `ana` (analyst) and
    `fin` (finance)."""
    tmp = tmp_path_factory.mktemp("ui")
    home = tmp / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "BILLING_DATABASE_URL": f"sqlite:///{tmp / 'billing.db'}",
        "BILLING_DATA_DIR": str(tmp / "data"),
        "BILLING_UI_SESSION_SECRET": SECRET,
    }
    users = tmp / "ui-users"
    for name, role in (("ana", "analyst"), ("fin", "finance")):
        subprocess.run(
            [sys.executable, "-m", "billing_pipeline.cli", "ui", "user-add", name,
             "--role", role, "--users-file", str(users), "--password", f"{name}-pw"],
            env=env, check=True, capture_output=True, cwd=ROOT,
        )  # fmt: skip
    assert oct(users.stat().st_mode & 0o777) == "0o600"
    write, read, proxy = free_port(), free_port(), free_port()
    webserver = [str(BIN / "dagster-webserver"), "-h", "127.0.0.1", "-w", "workspace.yaml"]
    commands = [
        [*webserver, "-p", str(write)],
        [*webserver, "-p", str(read), "--read-only"],
        [sys.executable, "-m", "billing_pipeline.cli", "ui", "proxy", "--users-file", str(users),
         "--analyst-upstream", f"http://127.0.0.1:{write}",
         "--finance-upstream", f"http://127.0.0.1:{read}", "--port", str(proxy)],
    ]  # fmt: skip
    logs = [open(tmp / f"process-{i}.log", "wb") for i in range(len(commands))]
    processes: list[subprocess.Popen[bytes]] = []
    try:
        # One at a time: the first makes the instance's SQLite storage, which two processes
        # starting at once would race to create.
        for command, log, port in zip(commands, logs, (write, read, None), strict=True):
            processes.append(
                subprocess.Popen(command, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
            )
            if port is not None:
                _wait(lambda port=port: _loaded(f"http://127.0.0.1:{port}"), f"webserver {port}")
        base = f"http://127.0.0.1:{proxy}"
        _wait(lambda: requests.get(f"{base}/login", timeout=5).ok, "the proxy")
        yield base
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
        for log in logs:
            log.close()


def _signed_in(base: str, name: str) -> requests.Session:
    session = requests.Session()
    answer = session.post(
        f"{base}/login",
        data={"username": name, "password": f"{name}-pw", "next": "/"},
        allow_redirects=False,
        timeout=10,
    )
    assert answer.status_code == 303, answer.status_code
    assert "billing_ui_session" in session.cookies
    return session


def test_without_a_session_the_ui_and_graphql_are_refused(ui: str) -> None:
    page = requests.get(
        f"{ui}/", headers={"Accept": "text/html"}, allow_redirects=False, timeout=10
    )
    assert page.status_code == 303
    assert page.headers["Location"].startswith("/login")
    for answer in (
        requests.get(f"{ui}/", allow_redirects=False, timeout=10),
        requests.post(f"{ui}/graphql", json={"query": REPOSITORIES}, timeout=10),
        requests.post(f"{ui}/graphql", json={"query": REPOSITORIES}, timeout=10,
                      cookies={"billing_ui_session": "forged.0000"}),
    ):  # fmt: skip
        assert answer.status_code == 401
        assert "repositoriesOrError" not in answer.text
    wrong = requests.post(
        f"{ui}/login", data={"username": "ana", "password": "nope"}, allow_redirects=False,
        timeout=10,
    )  # fmt: skip
    assert wrong.status_code == 401
    assert "billing_ui_session" not in wrong.cookies


def test_with_a_session_the_ui_and_graphql_answer(ui: str) -> None:
    for name in ("ana", "fin"):
        session = _signed_in(ui, name)
        page = session.get(f"{ui}/", timeout=30)
        assert page.status_code == 200
        assert "<html" in page.text.lower()
        answer = session.post(f"{ui}/graphql", json={"query": REPOSITORIES}, timeout=30)
        assert answer.status_code == 200
        assert answer.json()["data"]["repositoriesOrError"]["nodes"], answer.text


def test_finance_reads_through_the_read_only_webserver_which_refuses_a_backfill(ui: str) -> None:
    finance = _signed_in(ui, "fin")
    refused = finance.post(
        f"{ui}/graphql", json={"query": LAUNCH_BACKFILL, "variables": BACKFILL}, timeout=60
    )
    assert refused.status_code == 200
    result = refused.json()["data"]["launchPartitionBackfill"]
    assert result["__typename"] == "UnauthorizedError", result
    # The analyst's webserver takes the same request (nothing runs it: no daemon here).
    analyst = _signed_in(ui, "ana")
    launched = analyst.post(
        f"{ui}/graphql", json={"query": LAUNCH_BACKFILL, "variables": BACKFILL}, timeout=60
    )
    assert launched.json()["data"]["launchPartitionBackfill"]["__typename"] == (
        "LaunchBackfillSuccess"
    ), launched.text


async def _websocket_ack(url: str, cookie: str | None) -> str:
    import aiohttp

    # A header, not the client's cookie jar: aiohttp's keeps no cookies for IP addresses.
    headers = {"Cookie": f"billing_ui_session={cookie}"} if cookie else {}
    async with aiohttp.ClientSession(headers=headers) as client:
        try:
            async with client.ws_connect(url, protocols=["graphql-ws"]) as socket:
                await socket.send_json({"type": "connection_init", "payload": {}})
                message = await socket.receive_json(timeout=30)
                return str(message["type"])
        except aiohttp.WSServerHandshakeError as refused:
            return f"refused {refused.status}"


def test_live_run_logs_pass_the_websocket_only_with_a_session(ui: str) -> None:
    import asyncio

    url = ui.replace("http", "ws", 1) + "/graphql"
    assert asyncio.run(_websocket_ack(url, None)) == "refused 401"
    cookie = _signed_in(ui, "fin").cookies["billing_ui_session"]
    assert asyncio.run(_websocket_ack(url, cookie)) == "connection_ack"
