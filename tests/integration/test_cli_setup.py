"""Found when tried (issue 11, 5 and 6): the CLI refuses a billing database that was never set
up, naming it without its password, and creates nothing; a bad URL is shown (password masked)
instead of "the message is withheld"; the demo's closing hints are commands one can paste; the
demo's summary has the open balance in dollars, the split per practice and the warnings that
`report` contains."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import inspect, make_url

from billing_pipeline.cli import main
from billing_pipeline.db.engine import dispose_engines, get_engine
from billing_pipeline.demo import closing_hints, summary_lines
from billing_pipeline.domain.money import dollars
from tests.conftest import SCENARIOS, create_pg_database, drop_pg_database
from tests.simulated import Simulations


def run_cli(env: dict[str, str | None], *args: str):
    try:
        return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)
    finally:
        dispose_engines()


@pytest.mark.parametrize("command", [["report", "--json"], ["explain", "cl-ana"]])
def test_with_no_database_url_and_no_database_a_command_refuses_and_creates_nothing(
    tmp_path: Path, command: list[str]
) -> None:
    data = tmp_path / "data"
    done = run_cli({"BILLING_DATABASE_URL": None, "BILLING_DATA_DIR": str(data)}, *command)
    assert done.exit_code == 2, done.output
    assert f"the billing database sqlite:///{data / 'billing.db'} does not exist" in done.output
    assert "BILLING_DATABASE_URL is not set" in done.output
    assert "billing-pipeline scenario load" in done.output
    assert not data.exists()


@pytest.mark.postgres
def test_an_unmigrated_database_is_refused_naming_it_without_its_password() -> None:
    url = create_pg_database()  # empty: never migrated
    try:
        with_password = make_url(url).set(password="hunter2").render_as_string(False)
        for command in (["explain", "cl-ana"], ["report"]):
            done = run_cli({"BILLING_DATABASE_URL": with_password}, *command)
            assert done.exit_code == 2, done.output
            shown = make_url(with_password).render_as_string(hide_password=True)
            assert f"the billing database {shown} has not been set up" in done.output
            assert "***" in shown and "hunter2" not in done.output
        assert inspect(get_engine(url)).get_table_names() == []  # nothing was created
    finally:
        drop_pg_database(url)


def test_a_bad_database_url_is_shown_with_its_password_masked() -> None:
    done = run_cli(
        {"BILLING_DATABASE_URL": "nosuchdriver://bob:s3cret@db.example/billing"}, "report"
    )
    assert done.exit_code == 2, done.output
    assert "nosuchdriver://bob:***@db.example/billing" in done.output
    assert "s3cret" not in done.output and "withheld" not in done.output


def test_the_demos_closing_hints_are_commands_one_can_paste(tmp_path: Path) -> None:
    home, db_url = tmp_path / "demo" / "dagster_home", f"sqlite:///{tmp_path / 'demo/billing.db'}"
    hints = closing_hints(Path("/opt/billing pipeline"), home, db_url)
    commands = [h.strip() for h in hints if h.startswith("  ")]
    assert len(commands) == 3
    for command in commands:
        assert "..." not in command
        words = shlex.split(command)
        assert words[:2] == ["cd", "/opt/billing pipeline"]
    # The UI on the demo's instance (its data folder holds demo/dagster_home), then two reads
    # of the demo's database.
    ui = shlex.split(commands[0])
    assert ui[-2:] == [".venv/bin/billing-pipeline", "ui"], ui
    assert f"BILLING_DATA_DIR={tmp_path}" in ui
    for command in commands[1:]:
        assert f"BILLING_DATABASE_URL={db_url}" in shlex.split(command)
    assert any(w.endswith("explain") or w == "explain" for w in shlex.split(commands[1]))


@pytest.mark.slow
def test_the_demo_summary_has_the_open_balance_the_practices_and_the_reports_warnings(
    simulations: Simulations, backend: str
) -> None:
    sim = simulations.get(SCENARIOS / "autopay_gates.json", backend)
    engine = get_engine(sim.env["BILLING_DATABASE_URL"])
    lines = summary_lines(engine)
    text = "\n".join(lines)
    report = sim.report
    open_cents = sum(b["amount_cents"] for b in report["bills"] if b["status"] == "open")
    assert f"Open:        {dollars(open_cents)} still owed on open bills" in lines
    accounts = sorted(a["id"] for a in sim.doc["accounts"])
    assert len(accounts) == 2
    at = lines.index("Per practice:")
    assert [line.split(":")[0].strip() for line in lines[at + 1 : at + 3]] == accounts
    account_of = {c["id"]: c["account_id"] for c in sim.doc["clients"]}
    for account, line in zip(accounts, lines[at + 1 : at + 3], strict=True):
        mine = [b for b in report["bills"] if account_of[b["client_id"]] == account]
        billed = sum(b["amount_cents"] for b in mine)
        assert f"{len(mine)} bills for {dollars(billed)}" in line
    warnings = report["warnings"]
    assert warnings, "the scenario has settings warnings"
    assert f"Warnings:    {len(warnings)} (as in `billing-pipeline report`)" in lines
    for warning in warnings:
        assert f"{warning['code']} ({warning['client_id']}): {warning['message']}" in text
