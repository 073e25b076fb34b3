"""What a new analyst found in the Dagster UI (issue 11, "Found when tried" 1 to 4), each
checked without a browser or Dagster processes: the nightly chain over a range of nights run in
process (as a single-run backfill runs it), the definitions, the freshness rule, the instance.
The same points seen through the real webserver, daemon and a browser:
tests/integration/test_ui_end_to_end.py."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, func, select

from billing_pipeline.assets.chain import NIGHT_CHAIN
from billing_pipeline.db import models as m
from billing_pipeline.definitions import defs
from billing_pipeline.domain.freshness import lag, newest_due_night
from billing_pipeline.domain.schedule import PracticeClock, Step
from billing_pipeline.localstripe_server import LocalStripe
from billing_pipeline.partitions import NIGHTS_TAG, PRACTICES_TAG, nights_label, practices_label
from billing_pipeline.resources.payments import Payments
from billing_pipeline.scenario.load import load_scenario
from billing_pipeline.simulate import POOLED_INSTANCE_YAML, SimulationResult, simulate
from billing_pipeline.ui_stack import UiInstance, commands, ensure_pool_slots, process_env
from tests.conftest import CONTRACT

ROOT = Path(__file__).resolve().parents[2]
FIRST, LAST = date(2026, 11, 1), date(2026, 11, 3)
NIGHTS = [FIRST + timedelta(days=i) for i in range(3)]


@pytest.fixture
def loaded(engine: Engine, localstripe: LocalStripe, monkeypatch: pytest.MonkeyPatch) -> Engine:
    """daily_autopay loaded (its cards in the session's localstripe); the Dagster resources
    pointed at that database and Stripe through the environment, as in production."""
    payments = Payments(api_key="sk_test_x", api_base=localstripe.url)
    load_scenario(CONTRACT / "scenarios" / "daily_autopay.json", engine, payments)
    monkeypatch.setenv("BILLING_DATABASE_URL", engine.url.render_as_string(hide_password=False))
    monkeypatch.setenv("STRIPE_API_BASE", localstripe.url)
    return engine


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as inst:
        yield inst


def bills_per_night(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        found = conn.execute(select(m.Bill.night, func.count()).group_by(m.Bill.night)).all()
    return {night.isoformat(): n for night, n in found}


def materializations(instance: dg.DagsterInstance, asset: str) -> dict[str, dict[str, object]]:
    """{partition: {metadata key: value}} of the asset's newest materialisation per night."""
    records = instance.fetch_materializations(dg.AssetKey(asset), limit=1000).records
    out: dict[str, dict[str, object]] = {}
    for record in sorted(records, key=lambda r: r.storage_id):
        mat = record.asset_materialization
        assert mat is not None and mat.partition is not None
        out[mat.partition] = {k: v.value for k, v in mat.metadata.items()}
    return out


def run_simulation(instance: dg.DagsterInstance) -> SimulationResult:
    return simulate(FIRST, LAST, instance)


# --- 1. No Stripe key: the bills are made, AutoPay fails alone, naming the setting ------------


@pytest.mark.slow  # Dagster runs over several nights, or a Python process
def test_without_a_stripe_key_bills_are_made_and_autopay_fails_alone_naming_the_key(
    loaded: Engine, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("STRIPE_API_KEY", raising=False)
    result = run_simulation(instance)
    assert result.failed, "AutoPay without a key must fail the run"
    assert bills_per_night(loaded) == {"2026-11-01": 1, "2026-11-02": 1, "2026-11-03": 2}
    with loaded.connect() as conn:
        assert conn.execute(select(func.count()).select_from(m.AutopayAttempt)).scalar() == 0
    (run_id,) = result.failed
    failures = [
        e.dagster_event
        for e in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_FAILURE)
        if e.dagster_event is not None
    ]
    assert [f.step_key for f in failures] == ["autopay_attempts"]  # alone
    data = failures[0].step_failure_data
    assert data.user_failure_data is not None, "a dagster.Failure, not a bare exception"
    description = data.user_failure_data.description or ""
    assert "STRIPE_API_KEY is not set" in description
    assert "environment" in description and ".env" in description  # where to set it
    assert data.user_failure_data.metadata["missing_setting"].value == "STRIPE_API_KEY"
    # Not retried: a retry would not find a key either.
    retries = instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_UP_FOR_RETRY)
    assert retries == []
    # The steps that do not talk to Stripe ran: every night's bills materialised.
    assert set(materializations(instance, "bills")) == {n.isoformat() for n in NIGHTS}


def test_the_job_config_needs_no_stripe_key() -> None:
    """The payments resource asks for no `EnvVar`: an unset one would make the whole job's
    config invalid before its first step (DagsterInvalidConfigError)."""
    payments = (defs.resources or {})["payments"]
    assert isinstance(payments, Payments)
    assert not isinstance(payments.api_key, dg.EnvVar)
    without = Payments(api_key_env_var="BILLING_TEST_NO_SUCH_VARIABLE")
    assert not without.configured()
    assert "BILLING_TEST_NO_SUCH_VARIABLE is not set" in without.missing_key_message()


# --- 2. Each night of a ranged run shows its own figures -------------------------------------


@pytest.mark.slow  # Dagster runs over several nights, or a Python process
def test_each_night_of_a_ranged_run_shows_its_own_figures_never_the_batchs(
    loaded: Engine, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STRIPE_API_KEY", "sk_test_x")
    result = run_simulation(instance)
    assert result.success, result.problems
    made = bills_per_night(loaded)
    assert made == {"2026-11-01": 1, "2026-11-02": 1, "2026-11-03": 2}
    batch = sum(made.values())
    bills = materializations(instance, "bills")
    assert sorted(bills) == sorted(made)
    for night, meta in bills.items():
        assert meta["night"] == night
        assert meta["bills"] == made[night], night
        assert "per_night" not in meta  # no batch-wide table copied onto the night
    assert batch not in {meta["bills"] for meta in bills.values()}
    # The amounts too: the night's own bills, in cents and dollars.
    with loaded.connect() as conn:
        query = select(m.Bill.night, func.sum(m.Bill.amount_cents)).group_by(m.Bill.night)
        cents = {night: int(total) for night, total in conn.execute(query).all()}
    for night, meta in bills.items():
        assert meta["amount_cents"] == cents[date.fromisoformat(night)]
    # Every asset of the chain: one materialisation per night, each naming its own night.
    for asset in (a.key.to_user_string() for a in NIGHT_CHAIN):
        per_night = materializations(instance, asset)
        assert all(meta["night"] == night for night, meta in per_night.items()), asset
    # 3. The run is tagged with its nights and practices (the run list shows them).
    chain_run = instance.get_run_by_id(result.run_ids[0])
    assert chain_run is not None
    assert chain_run.tags[NIGHTS_TAG] == "2026-11-01..2026-11-03 (3 nights)"
    assert chain_run.tags[PRACTICES_TAG] == "acct-sunrise"
    # 4. The imported-CPT check lists its session ids as text on its page, not only as JSON.
    cpt = _cpt_evaluation(instance, result.run_ids[0])
    assert cpt.metadata["sessions_to_bill_by_hand"].value == "s-ben-imported"
    assert "s-ben-imported" in (cpt.description or "")
    # 4. Freshness from the nights done: fresh the next morning, stale weeks later, whenever
    # the nights were materialised (here: just now).
    assert freshness(instance, datetime(2026, 11, 4, 12, tzinfo=UTC)) == {
        "bills": True,
        "autopay_attempts": True,
    }
    late = datetime(2026, 11, 30, 12, tzinfo=UTC)  # Nov 29 is due in Los Angeles
    stale = ledger_checks(instance, late)
    assert {k: e.passed for k, e in stale.items()} == {"bills": False, "autopay_attempts": False}
    assert stale["bills"].metadata["most_nights_behind"].value == 26
    assert "acct-sunrise: newest night done 2026-11-03" in (stale["bills"].description or "")


def ledger_checks(instance: dg.DagsterInstance, at: datetime) -> dict[str, dg.AssetCheckEvaluation]:
    """night_ledger_job (the ledger and the freshness checks) with the clock at `at`."""
    job = defs.resolve_job_def("night_ledger_job")
    clock = {"config": {"mode": "logical", "at": at.isoformat()}}
    run = job.execute_in_process(instance=instance, run_config={"resources": {"clock": clock}})
    return {
        e.asset_key.to_user_string(): e
        for e in run.get_asset_check_evaluations()
        if e.check_name == "newest_night_is_recent"
    }


def freshness(instance: dg.DagsterInstance, at: datetime) -> dict[str, bool]:
    return {asset: e.passed for asset, e in ledger_checks(instance, at).items()}


def _cpt_evaluation(instance: dg.DagsterInstance, run_id: str) -> dg.AssetCheckEvaluation:
    found = [
        e.dagster_event.event_specific_data
        for e in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
        if e.dagster_event is not None
    ]
    (evaluation,) = [
        d
        for d in found
        if isinstance(d, dg.AssetCheckEvaluation)
        and d.check_name == "imported_sessions_have_cpt_codes"
    ]
    return evaluation


# --- 3. Run tags and the descriptions of the schedule and sensors ----------------------------


def test_run_labels_name_the_nights_and_practices() -> None:
    assert nights_label([date(2026, 11, 3)]) == "2026-11-03"
    assert nights_label(NIGHTS) == "2026-11-01..2026-11-03 (3 nights)"
    assert practices_label(["b", "a", "a"]) == "a,b"
    many = practices_label([f"acct-{i:02}" for i in range(50)])
    assert many.startswith("acct-00,acct-01,") and many.endswith("(50 practices)")
    assert len(many) < 255


def test_the_schedule_and_sensors_explain_the_per_timezone_steps() -> None:
    repository = defs.get_repository_def()
    catch_up = (repository.get_sensor_def("launch_due_nights").description or "").lower()
    for words in ("00:00", "00:30", "timezone", "autopay", "bills"):
        assert words in catch_up, words
    for sensor in repository.sensor_defs:
        assert len(sensor.description or "") > 80, sensor.name
    for schedule in repository.schedule_defs:
        assert "00:00" in (schedule.description or ""), schedule.name


# --- 4. Checks, freshness, the pool, no BetaWarning -------------------------------------------


def test_every_check_has_a_description_in_a_practices_words() -> None:
    graph = defs.resolve_asset_graph()
    keys = graph.asset_check_keys
    assert len(keys) >= 12
    for key in keys:
        spec = graph.get_check_spec(key)
        assert len((spec.description or "").strip()) > 40, key.to_user_string()


def test_no_nightly_asset_has_a_wall_clock_freshness_policy() -> None:
    """Dagster 1.13's policies judge when the last materialisation happened: after a backfill
    of an old month they said Passing. The nights done are judged by newest_night_is_recent."""
    for spec in defs.resolve_all_asset_specs():
        assert spec.freshness_policy is None, spec.key.to_user_string()
    ledger_job = defs.resolve_job_def("night_ledger_job")
    assert {"bills_newest_night_is_recent", "autopay_attempts_newest_night_is_recent"} <= {
        n.name for n in ledger_job.nodes
    }
    chain_job = defs.resolve_job_def("nightly_chain_job")
    assert not any("newest_night" in n.name for n in chain_job.nodes)


LA = PracticeClock("acct-la", "America/Los_Angeles", datetime(2026, 1, 5, 17, tzinfo=UTC))


def test_a_month_old_newest_night_is_stale_whenever_it_was_materialised() -> None:
    now = datetime(2026, 11, 30, 12, tzinfo=UTC)  # 04:00 in Los Angeles
    assert newest_due_night("America/Los_Angeles", Step.BILLS, now) == date(2026, 11, 29)
    behind = lag(LA, Step.BILLS, [date(2026, 10, 31)], now)
    assert behind is not None and behind.nights_behind == 29
    assert "newest night done 2026-10-31" in behind.describe()
    assert lag(LA, Step.BILLS, [date(2026, 11, 29)], now) is None  # last night: fresh


def test_a_night_is_late_only_an_hour_after_its_step() -> None:
    # 00:45 in Los Angeles: the 00:00 step of Nov 29 is 45 minutes old, AutoPay's 15.
    now = datetime(2026, 11, 30, 8, 45, tzinfo=UTC)
    assert lag(LA, Step.BILLS, [date(2026, 11, 28)], now) is None
    assert lag(LA, Step.AUTOPAY, [date(2026, 11, 28)], now) is None
    later = now + timedelta(hours=1)
    behind = lag(LA, Step.BILLS, [date(2026, 11, 28)], later)
    assert behind is not None and behind.nights_behind == 1
    # A practice with no client has nothing due; one with no night done is behind from its first.
    assert lag(PracticeClock("acct-new", "UTC", None), Step.BILLS, [], later) is None
    fresh = PracticeClock("acct-x", "UTC", datetime(2026, 11, 28, 9, tzinfo=UTC))
    never = lag(fresh, Step.BILLS, [], later)
    assert never is not None and never.newest_done is None and never.nights_behind == 2


def test_the_demos_instance_gives_the_nightly_pool_its_slot(tmp_path: Path) -> None:
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(POOLED_INSTANCE_YAML)
    with dg.DagsterInstance.from_config(str(home)) as inst:
        info = inst.event_log_storage.get_concurrency_info("billing_nightly")
        assert info.limit == 1
    assert ensure_pool_slots(home) == 1
    # An instance that sets no limit (a demo made before this change) gets one slot.
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    assert ensure_pool_slots(bare) == 1
    with dg.DagsterInstance.from_config(str(bare)) as inst:
        assert inst.event_log_storage.get_concurrency_info("billing_nightly").slot_count == 1


@pytest.mark.slow  # Dagster runs over several nights, or a Python process
def test_loading_the_code_prints_no_beta_warning() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-W",
            "always",
            "-c",
            "from billing_pipeline.definitions import defs; defs.get_repository_def()",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "BetaWarning" not in done.stderr, done.stderr[-2000:]


# --- The `billing-pipeline ui` command --------------------------------------------------------


def test_ui_runs_the_webserver_and_daemon_with_the_instance_and_its_stripe(
    tmp_path: Path,
) -> None:
    ui = UiInstance(tmp_path / "dagster_home", "sqlite:///x.db", demo=True)
    env = process_env({"PATH": "/bin", "STRIPE_API_KEY": "sk_live_not_this"}, ui, "http://s")
    assert env["DAGSTER_HOME"] == str(tmp_path / "dagster_home")
    assert env["BILLING_DATABASE_URL"] == "sqlite:///x.db"
    assert (env["STRIPE_API_KEY"], env["STRIPE_API_BASE"]) == ("sk_test_demo", "http://s")
    production = process_env({"STRIPE_API_KEY": "sk_live_k"}, ui, None)
    assert production["STRIPE_API_KEY"] == "sk_live_k" and "STRIPE_API_BASE" not in production
    webserver, daemon = commands("127.0.0.1", 3123)
    assert Path(webserver[0]).name == "dagster-webserver" and "3123" in webserver
    assert webserver[-2:] == ["-w", "workspace.yaml"]
    assert Path(daemon[0]).name == "dagster-daemon"
    assert daemon[1:] == ["run", "-w", "workspace.yaml"]


def test_ui_refuses_an_instance_that_is_not_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from billing_pipeline.cli import main

    monkeypatch.setenv("BILLING_DATA_DIR", str(tmp_path / "data"))
    done = CliRunner().invoke(main, ["ui"])
    assert done.exit_code == 2
    assert "run the demo first: ./scripts/demo.sh" in done.output
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    done = CliRunner().invoke(main, ["ui", "--from-env"])
    assert done.exit_code == 2 and "DAGSTER_HOME is not set" in done.output


def test_the_demos_local_stripe_keeps_its_customers_for_the_ui(tmp_path: Path) -> None:
    """The demo stops its local Stripe with the store saved; `billing-pipeline ui` starts one
    on the same file, and AutoPay finds the cards the demo registered."""
    import stripe

    store = str(tmp_path / "localstripe.pickle")
    with LocalStripe(store=store) as server:
        client = stripe.StripeClient("sk_test_x", base_addresses={"api": server.url})
        made = client.v1.customers.create(params={"metadata": {"owner_ref": "cl-x"}})
    with LocalStripe(store=store) as server:
        client = stripe.StripeClient("sk_test_x", base_addresses={"api": server.url})
        assert client.v1.customers.retrieve(made.id).metadata["owner_ref"] == "cl-x"
