"""The analyst's tour, end to end (issue 11): the real `dagster-webserver` and `dagster-daemon` on
loopback, on a PostgreSQL Dagster instance made from the project's own dagster.yaml (a database
created for the module and dropped after) and a PostgreSQL billing database, started the way the
README says and WITHOUT a Stripe key. Backfills are launched through the webserver's GraphQL
API with the `launchPartitionBackfill` mutation, as the UI launches them, and executed by the
daemon; then headless Chromium (Debian's, through Playwright's `executable_path`: Playwright
never downloads a browser) opens the UI and takes the screenshots of the README's tour (saved
in the test's folder; `BILLING_UI_SCREENSHOTS=docs/img` refreshes the README's).

- A backfill of Nov 1..3 2026 (daily_autopay) of the 00:00 assets: the bills are in the
  billing database, each partition's materialisation shows its own night's figures (none the
  batch's), the runs are tagged with their nights, and the UI shows the asset graph, the
  `bills` partitions materialised and the imported-CPT check's result.
- A night of the whole chain for another practice with no Stripe key: its bills are made and
  AutoPay fails alone, with a message naming STRIPE_API_KEY.

What keeps it quick: one webserver and one daemon for the module, the daemon's backfill loop
every 2 s instead of its fixed 30 s (as tests/integration/test_backfill.py does: no setting
changes it), the queue dequeued every second (dagster.yaml), the sensors and the ledger's
schedule stopped through GraphQL before the daemon starts (only the backfills run).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import requests
from dagster._core.execution.backfill import BULK_ACTION_TERMINAL_STATUSES, BulkActionStatus
from dagster._core.instance.ref import InstanceRef
from sqlalchemy import func, select

from billing_pipeline.db import models as m
from billing_pipeline.db.engine import get_engine
from billing_pipeline.localstripe_server import LocalStripe, free_port
from billing_pipeline.partitions import ACCOUNTS_TAG, NIGHTS_TAG
from billing_pipeline.resources.payments import Payments
from billing_pipeline.scenario.load import load_scenario
from tests.conftest import CONTRACT, create_pg_database, drop_pg_database
from tests.contract.runner import environment

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
# The screenshots go to the test's own folder; BILLING_UI_SCREENSHOTS=docs/img refreshes the
# README's pictures (a test run leaves the work tree as it was).
SHOTS_ENV = "BILLING_UI_SCREENSHOTS"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
LOCATION = "billing_pipeline"
REPOSITORY = "__repository__"
NIGHTS = ["2026-11-01", "2026-11-02", "2026-11-03"]
CHAIN_NAMES = ("eligible_sessions", "resolved_settings", "bills", "autopay_attempts", "statements")
MIDNIGHT_ASSETS = ["eligible_sessions", "resolved_settings", "bills", "superbills", "statements"]
TOUR = "november-1-to-3"
NO_KEY = "no-stripe-key"
NO_KEY_NIGHT = "2026-11-20"
NO_KEY_PRACTICE = "acct-prairie"
NO_KEY_ASSETS = ["eligible_sessions", "resolved_settings", "bills", "autopay_attempts"]
TIMEOUT_SECONDS = 240
BACKFILL_DAEMON_INTERVAL_SECONDS = 2

# `dagster-daemon run -w workspace.yaml`, with the backfill loop's fixed 30 s shortened first.
DAEMON_MAIN = f"""\
import sys
import dagster._daemon.controller as controller
from dagster._daemon.cli import main
assert controller.DEFAULT_DAEMON_INTERVAL_SECONDS == 30, "Dagster changed: see this test"
controller.DEFAULT_DAEMON_INTERVAL_SECONDS = {BACKFILL_DAEMON_INTERVAL_SECONDS}
sys.argv = ["dagster-daemon", "run", "-w", "workspace.yaml"]
sys.exit(main())
"""

REPOSITORIES = "{ repositoriesOrError { ... on RepositoryConnection { nodes { name } } } }"
INSTIGATORS = """
query Instigators($selector: RepositorySelector!) {
  sensorsOrError(repositorySelector: $selector) { ... on Sensors { results { id name } } }
  schedulesOrError(repositorySelector: $selector) { ... on Schedules { results { id name } } }
}"""
STOP_SENSOR = """
mutation Stop($id: String!) { stopSensor(id: $id) { __typename } }"""
STOP_SCHEDULE = """
mutation Stop($id: String!) { stopRunningSchedule(id: $id) { __typename } }"""
LAUNCH_BACKFILL = """
mutation LaunchBackfill($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on Error { message }
    ... on PythonError { message stack }
  }
}"""


@dataclass
class Stack:
    base: str
    env: dict[str, str]
    billing_url: str
    instance: dg.DagsterInstance
    logs: Path
    backfills: dict[str, str] = field(default_factory=dict)  # title: id

    def gql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        answer = requests.post(
            f"{self.base}/graphql", json={"query": query, "variables": variables or {}}, timeout=60
        )
        answer.raise_for_status()
        body = answer.json()
        assert "errors" not in body, body["errors"]
        return body["data"]

    def launch_backfill(
        self, assets: list[str], nights: list[str], title: str, tags: dict[str, str] | None = None
    ) -> str:
        params: dict[str, Any] = {
            "assetSelection": [{"path": [a]} for a in assets],
            "partitionNames": nights,
            "title": title,
        }
        if tags:
            params["tags"] = [{"key": k, "value": v} for k, v in tags.items()]
        result = self.gql(LAUNCH_BACKFILL, {"params": params})["launchPartitionBackfill"]
        assert result["__typename"] == "LaunchBackfillSuccess", result
        return str(result["backfillId"])

    def log_tail(self) -> str:
        out = []
        for path in sorted(self.logs.glob("*.log")):
            lines = path.read_text(errors="replace").splitlines()[-40:]
            out += [f"--- {path.name} ---", *lines]
        return "\n".join(out)


def _wait(check: Callable[[], bool], what: str, stack_logs: Path | None = None) -> None:
    deadline = time.monotonic() + TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    tail = ""
    if stack_logs is not None:
        tail = "\n".join(
            p.read_text(errors="replace")[-3000:] for p in sorted(stack_logs.glob("*.log"))
        )
    raise AssertionError(f"{what} not within {TIMEOUT_SECONDS} s\n{tail}")


def _start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM to each process's own group (its code server, run workers), all at once; then
    SIGKILL to the groups of those still there after a few seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for proc in procs:
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(p.poll() is None for p in procs):
            time.sleep(0.2)
    for proc in procs:
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, localstripe: LocalStripe) -> Iterator[Stack]:
    # Every night backfilled is long past: each step's time has come on the wall clock.
    assert date.fromisoformat(NO_KEY_NIGHT) + timedelta(days=2) < date.today()
    tmp = tmp_path_factory.mktemp("ui_e2e")
    billing_url = create_pg_database(migrated=True)
    dagster_url = create_pg_database()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        # The practices: cards registered in the session's localstripe by the loader (the
        # UI's processes get no Stripe key at all).
        engine = get_engine(billing_url)
        cards = Payments(api_key="sk_test_x", api_base=localstripe.url)
        load_scenario(CONTRACT / "scenarios" / "daily_autopay.json", engine, cards)
        load_scenario(_with_an_imported_session(tmp), engine, cards)
        home = tmp / "dagster_home"
        home.mkdir()
        shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")  # production's instance
        logs = tmp / "logs"
        logs.mkdir()
        env = {k: v for k, v in os.environ.items() if not k.startswith("STRIPE_")}
        env.update(
            {
                "DAGSTER_HOME": str(home),
                "DAGSTER_PG_URL": dagster_url,
                "BILLING_DATABASE_URL": billing_url,
                "BILLING_DATA_DIR": str(tmp / "data"),
            }
        )
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        webserver = [str(BIN / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(port)]
        procs.append(_start([*webserver, "-w", "workspace.yaml"], env, logs / "webserver.log"))

        def loaded() -> bool:
            answer = requests.post(f"{base}/graphql", json={"query": REPOSITORIES}, timeout=10)
            nodes = answer.json().get("data", {}).get("repositoriesOrError", {}).get("nodes")
            return bool(nodes)

        _wait(loaded, "the webserver and its code location", logs)
        with environment({"DAGSTER_PG_URL": dagster_url}):
            instance = dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))
        stack = Stack(base, env, billing_url, instance, logs)
        # Only the backfills run: the catch-up sensor would launch the recent nights too.
        selector = {"repositoryName": REPOSITORY, "repositoryLocationName": LOCATION}
        found = stack.gql(INSTIGATORS, {"selector": selector})
        for sensor in found["sensorsOrError"]["results"]:
            stack.gql(STOP_SENSOR, {"id": sensor["id"]})
        for schedule in found["schedulesOrError"]["results"]:
            stack.gql(STOP_SCHEDULE, {"id": schedule["id"]})
        # Both backfills are launched before the daemon starts, so that it works on them
        # together (the pool still runs one nightly step at a time); each test checks its own.
        stack.backfills[TOUR] = stack.launch_backfill(MIDNIGHT_ASSETS, NIGHTS, TOUR)
        stack.backfills[NO_KEY] = stack.launch_backfill(
            NO_KEY_ASSETS, [NO_KEY_NIGHT], NO_KEY, {ACCOUNTS_TAG: NO_KEY_PRACTICE}
        )
        procs.append(_start([sys.executable, "-c", DAEMON_MAIN], env, logs / "daemon.log"))
        yield stack
        instance.dispose()
    finally:
        _stop(procs)
        drop_pg_database(dagster_url)
        drop_pg_database(billing_url)


def _with_an_imported_session(folder: Path) -> Path:
    """sharing_defaults with an imported session without CPT on the no-key night too: both
    backfills' runs then flag one on the imported-CPT check, and the check's page shows a
    session id whichever of them evaluated it last (the daemon runs them side by side)."""
    doc = json.loads((CONTRACT / "scenarios" / "sharing_defaults.json").read_text())
    doc["sessions"].append(
        {
            "id": "s-early-imported",
            "client_id": "cl-early",
            "starts_at": f"{NO_KEY_NIGHT}T15:00:00-06:00",
            "source": "imported",
            "services": [{"cpt": None, "units": 1, "fee_cents": 15000}],
        }
    )
    path = folder / "sharing_defaults_with_imported.json"
    path.write_text(json.dumps(doc))
    return path


def _wait_for_backfill(stack: Stack, backfill_id: str) -> BulkActionStatus:
    def done() -> bool:
        backfill = stack.instance.get_backfill(backfill_id)
        return backfill is not None and backfill.status in BULK_ACTION_TERMINAL_STATUSES

    _wait(done, f"backfill {backfill_id}", stack.logs)
    backfill = stack.instance.get_backfill(backfill_id)
    assert backfill is not None
    return backfill.status


def _bills_per_night(stack: Stack, account_id: str | None = None) -> dict[str, int]:
    query = select(m.Bill.night, func.count()).group_by(m.Bill.night)
    if account_id:
        query = query.where(m.Bill.account_id == account_id)
    with get_engine(stack.billing_url).connect() as conn:
        return {night.isoformat(): n for night, n in conn.execute(query).all()}


def _newest_materializations(stack: Stack, asset: str) -> dict[str, dict[str, Any]]:
    records = stack.instance.fetch_materializations(dg.AssetKey(asset), limit=1000).records
    out: dict[str, dict[str, Any]] = {}
    for record in sorted(records, key=lambda r: r.storage_id):
        mat = record.asset_materialization
        assert mat is not None and mat.partition is not None
        out[mat.partition] = {k: v.value for k, v in mat.metadata.items()}
    return out


# --- The backfill, its figures, and the UI in a browser --------------------------------------


def test_a_backfill_launched_as_the_ui_does_shows_each_nights_figures_in_the_ui(
    stack: Stack,
) -> None:
    backfill_id = stack.backfills[TOUR]
    status = _wait_for_backfill(stack, backfill_id)
    assert status == BulkActionStatus.COMPLETED_SUCCESS, stack.log_tail()

    # The bills are in the billing database, night by night.
    made = {n: c for n, c in _bills_per_night(stack, "acct-sunrise").items() if n in NIGHTS}
    assert made == {"2026-11-01": 1, "2026-11-02": 1, "2026-11-03": 2}
    batch = sum(made.values())

    # Each partition shows its own night's figures, none the batch's.
    bills = _newest_materializations(stack, "bills")
    assert set(NIGHTS) <= set(bills)
    for night in NIGHTS:
        assert bills[night]["night"] == night
        assert bills[night]["bills"] == made[night], night
    assert batch not in {bills[night]["bills"] for night in NIGHTS}
    # Finance's table: each night its own rows, the practice's bills among them.
    # (finance_daily, like its 18:00 schedule, after the nights: a backfill of its own.)
    finance_id = stack.launch_backfill(["finance_daily"], NIGHTS, "finance-november-1-to-3")
    assert _wait_for_backfill(stack, finance_id) == BulkActionStatus.COMPLETED_SUCCESS
    finance = _newest_materializations(stack, "finance_daily")
    for night in NIGHTS:
        rows = {r.data["account_id"]: r.data for r in finance[night]["finance"].records}
        assert {r["night"] for r in rows.values()} == {night}
        assert rows["acct-sunrise"]["bills"] == made[night], (night, rows)
    eligible = _newest_materializations(stack, "eligible_sessions")
    assert eligible["2026-11-03"]["imported_sessions_missing_cpt"] == 1
    assert eligible["2026-11-01"]["imported_sessions_missing_cpt"] == 0

    # The runs say which nights and practices they covered (the run list shows the tags).
    runs = stack.instance.get_runs(filters=dg.RunsFilter.for_backfill(backfill_id))
    assert runs and all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
    for run in runs:  # read back from the run storage, where the run added them
        assert run.tags.get(NIGHTS_TAG, "").startswith("2026-11-01..2026-11-0"), run.tags

    _tour_in_the_browser(stack, backfill_id)


def _tour_in_the_browser(stack: Stack, backfill_id: str) -> None:
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "Debian's chromium: scripts/setup.sh installs it"
    shots = Path(os.environ.get(SHOTS_ENV) or stack.logs / "screenshots")
    if not shots.is_absolute():
        shots = ROOT / shots
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            page.set_default_timeout(30_000)
        except Exception:
            browser.close()
            raise
        try:
            # The asset graph: the chain's assets by name.
            group = f"/locations/{REPOSITORY}@{LOCATION}/asset-groups/billing/lineage"
            visit(page, stack.base + group)
            for name in CHAIN_NAMES:
                page.get_by_text(name, exact=True).first.wait_for()
            page.screenshot(path=str(shots / "ui-asset-graph.png"))

            # The bills' partitions: the backfilled nights materialised, Nov 3 with its figures.
            visit(page, f"{stack.base}/assets/bills?view=partitions&partition=2026-11-03")
            summary = page.get_by_text(re.compile(r"Materialized \([1-9]\d*\)")).first
            summary.wait_for()
            assert int(re.findall(r"\d+", summary.inner_text())[0]) >= len(NIGHTS)
            page.get_by_text("Missing (").first.click()  # list only what is materialised
            for night in NIGHTS:
                page.get_by_text(night, exact=True).first.wait_for()
            page.screenshot(path=str(shots / "ui-bills-partitions.png"))

            # The backfill, launched through the API as the UI launches it.
            visit(page, f"{stack.base}/runs/b/{backfill_id}")
            page.get_by_text("2026-11-01...2026-11-03").first.wait_for()
            page.get_by_text("Succeeded").first.wait_for()
            page.get_by_text("bills", exact=True).first.wait_for()
            page.screenshot(path=str(shots / "ui-backfill.png"))

            # The run list: each run tagged with the nights and practices it covered.
            visit(page, f"{stack.base}/runs")
            page.get_by_text("Show runs within backfills").first.click()
            page.get_by_text(re.compile(r"billing/nights")).first.wait_for()
            page.screenshot(path=str(shots / "ui-runs.png"))

            # Finance's table of a night, per practice, on finance_daily's partition.
            visit(page, f"{stack.base}/assets/finance_daily?view=partitions&partition=2026-11-03")
            page.get_by_text("collected_total").first.wait_for()
            page.screenshot(path=str(shots / "ui-finance-table.png"))

            # The imported-CPT check's result on the asset's checks page, its session ids shown.
            visit(page, f"{stack.base}/assets/eligible_sessions?view=checks")
            # The list truncates long names on screen ("imported_sessi…have_cpt_codes").
            page.get_by_text(re.compile("imported_sessi")).filter(visible=True).first.click()
            page.get_by_text(re.compile("s-ben-imported|s-early-imported")).first.wait_for()
            page.screenshot(path=str(shots / "ui-cpt-check.png"))
        except Exception:
            page.screenshot(path=str(stack.logs / "failed.png"))
            (stack.logs / "failed.txt").write_text(page.url + "\n" + page.inner_text("body"))
            raise
        finally:
            browser.close()


def visit(page: Any, url: str) -> None:
    """Open `url`; Dagster's first visit shows a "Join the Dagster community" modal: skip it."""
    page.goto(url)
    skip = page.get_by_role("button", name="Skip")
    try:
        skip.first.click(timeout=5_000)
    except Exception:  # no modal (not the first visit): nothing to dismiss
        pass


# --- Without a Stripe key: bills made, AutoPay fails alone, naming the setting ---------------


def test_without_a_stripe_key_a_backfilled_night_makes_bills_and_autopay_fails_alone(
    stack: Stack,
) -> None:
    assert not any(k.startswith("STRIPE_") for k in stack.env)
    backfill_id = stack.backfills[NO_KEY]
    _wait_for_backfill(stack, backfill_id)
    assert _bills_per_night(stack, NO_KEY_PRACTICE) == {NO_KEY_NIGHT: 3}
    runs = stack.instance.get_runs(filters=dg.RunsFilter.for_backfill(backfill_id))
    assert runs
    failed_steps: dict[str, str] = {}
    succeeded: set[str] = set()
    for run in runs:
        for entry in stack.instance.all_logs(
            run.run_id,
            of_type={dg.DagsterEventType.STEP_FAILURE, dg.DagsterEventType.STEP_SUCCESS},
        ):
            event = entry.dagster_event
            assert event is not None and event.step_key is not None
            if event.event_type == dg.DagsterEventType.STEP_SUCCESS:
                succeeded.add(event.step_key)
                continue
            data = event.step_failure_data
            described = data.user_failure_data.description if data.user_failure_data else None
            failed_steps[event.step_key] = described or data.error.to_string()
    assert set(failed_steps) == {"autopay_attempts"}, failed_steps  # alone
    assert {"eligible_sessions", "resolved_settings", "bills"} <= succeeded
    message = failed_steps["autopay_attempts"]
    assert message.startswith("STRIPE_API_KEY is not set"), message
    assert "environment" in message and ".env" in message


# --- `billing-pipeline ui`: both processes up, both stopped -----------------------------------


def test_billing_pipeline_ui_starts_the_webserver_and_daemon_and_stops_both(
    tmp_path: Path,
) -> None:
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRIPE_")}
    env.update({"DAGSTER_HOME": str(home), "BILLING_DATABASE_URL": f"sqlite:///{tmp_path}/b.db"})
    port = free_port()
    log = tmp_path / "ui.log"
    cmd = [str(BIN / "billing-pipeline"), "ui", "--from-env", "--port", str(port)]
    ui = _start(cmd, env, log)
    try:
        _wait(
            lambda: requests.get(f"http://127.0.0.1:{port}/server_info", timeout=5).ok,
            "billing-pipeline ui's webserver",
            tmp_path,
        )
        children = subprocess.run(
            ["ps", "-o", "args=", "--ppid", str(ui.pid)],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        assert "dagster-webserver" in children and "dagster-daemon run" in children, children
        with dg.DagsterInstance.from_config(str(home)) as instance:  # the pool got its slot
            assert instance.event_log_storage.get_concurrency_info("billing_nightly").limit == 1
        ui.send_signal(signal.SIGTERM)  # to the command alone: it stops its two processes
        assert ui.wait(timeout=60) == 0
    finally:
        _stop([ui])
    text = log.read_text()
    assert "STRIPE_API_KEY is not set" in text
    left = subprocess.run(["ps", "-eo", "args="], capture_output=True, text=True, check=False)
    assert f"-p {port}" not in left.stdout
