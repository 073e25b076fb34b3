"""Every read of a client's data is audited before anything is shown (db/audit.py): one
append-only row naming client ids (never names), hash-chained so that an edited row is found.
On both backends; on PostgreSQL the CLI runs as the pipeline's service role and the edit is made
as the tables' owner."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from billing_pipeline.db.access import OWNER_ROLE
from tests.conftest import CONTRACT, as_role
from tests.contract.runner import cli_in_process, simulate_in_process

SCENARIO = CONTRACT / "scenarios" / "daily_autopay.json"
NIGHT = "2026-11-03"


def _ok(env: dict[str, str], *args: str) -> str:
    done = cli_in_process(env, *args)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done.stdout


def _audit(env: dict[str, str], *args: str) -> list[dict[str, Any]]:
    return list(json.loads(_ok(env, "audit", "list", "--json", *args)))


def _edit_as_owner(url: str, sql: str) -> None:
    """A hand edit, as the tables' owner would make it (the superuser acting as the owner on
    PostgreSQL; the application roles are refused, see test_practice_access)."""
    if url.startswith("sqlite"):
        engine = create_engine(url)
        with engine.begin() as conn:
            conn.execute(text(sql))
        engine.dispose()
        return
    engine = create_engine(as_role(url, "postgres"))
    with engine.begin() as conn:
        conn.execute(text(f"SET LOCAL ROLE {OWNER_ROLE}"))
        conn.execute(text(sql))
    engine.dispose()


@pytest.mark.slow
def test_explain_twice_and_report_once_write_three_rows_and_an_edit_breaks_the_chain(
    cli_env: dict[str, str],
) -> None:
    _ok(cli_env, "scenario", "load", str(SCENARIO))
    simulate_in_process(cli_env, NIGHT, NIGHT)
    before = _audit(cli_env)

    first = _ok(cli_env, "explain", "cl-ana", "--date", NIGHT)
    assert "cl-ana" in first
    _ok(cli_env, "explain", "cl-ben", "--date", NIGHT)
    report = _ok(cli_env, "report", "--json")

    rows = _audit(cli_env)
    new = rows[len(before) :]
    assert [r["action"] for r in new] == ["explain", "explain", "report"]
    assert [r["client_ids"] for r in new[:2]] == [["cl-ana"], ["cl-ben"]]
    in_report = sorted(set(re.findall(r'"client_id": "([^"]+)"', report)))
    assert in_report  # the night billed someone: the report names clients
    assert new[2]["client_ids"] == in_report
    assert [r["account_id"] for r in new[:2]] == ["acct-sunrise", "acct-sunrise"]
    assert all(r["outcome"] == "shown" for r in new)
    assert [r["id"] for r in rows] == sorted(r["id"] for r in rows)  # oldest first
    # Ids, never names or addresses.
    people = json.loads(SCENARIO.read_text())["clients"]
    dumped = json.dumps(rows)
    for person in people:
        for value in (person["name"], *person["name"].split(), person.get("email") or "@@"):
            assert value not in dumped

    assert [r["id"] for r in _audit(cli_env, "--client", "cl-ben")] == [
        r["id"] for r in rows if "cl-ben" in r["client_ids"]
    ]
    assert _audit(cli_env, "--since", "2999-01-01T00:00:00+00:00") == []
    assert "every link holds" in _ok(cli_env, "audit", "verify")

    edited = new[1]["id"]
    _edit_as_owner(
        cli_env["BILLING_DATABASE_URL"],
        f"UPDATE audit_log SET client_ids = '[\"cl-ana\"]' WHERE id = {edited}",
    )
    done = cli_in_process(cli_env, "audit", "verify")
    assert done.returncode == 1
    assert f"audit row {edited}: its contents do not match its hash (edited)" in done.stderr


@pytest.mark.slow
def test_a_deleted_row_breaks_the_link_of_the_next_and_a_refused_explain_is_recorded(
    cli_env: dict[str, str],
) -> None:
    _ok(cli_env, "scenario", "load", str(SCENARIO))
    refused = cli_in_process(cli_env, "explain", "cl-nobody", "--date", NIGHT)
    assert refused.returncode == 2
    for _ in range(2):
        _ok(cli_env, "explain", "cl-ana", "--date", NIGHT)
    rows = _audit(cli_env)
    assert [(r["action"], r["client_ids"], r["outcome"]) for r in rows] == [
        ("explain", ["cl-nobody"], "refused: unknown client"),
        ("explain", ["cl-ana"], "shown"),
        ("explain", ["cl-ana"], "shown"),
    ]
    _edit_as_owner(
        cli_env["BILLING_DATABASE_URL"], f"DELETE FROM audit_log WHERE id = {rows[1]['id']}"
    )
    done = cli_in_process(cli_env, "audit", "verify")
    assert done.returncode == 1
    assert f"audit row {rows[2]['id']}: its link to the row before does not hold" in done.stderr


def test_audit_list_refuses_a_bad_instant(tmp_path: Path) -> None:
    env = {"BILLING_DATABASE_URL": f"sqlite:///{tmp_path / 'b.db'}"}
    done = cli_in_process(env, "audit", "list", "--since", "yesterday")
    assert done.returncode == 2
    assert "--since 'yesterday' is not an instant" in done.stderr


@pytest.mark.slow
def test_a_documents_export_and_each_pdf_it_renders_are_audited_before_any_file(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    _ok(cli_env, "scenario", "load", str(SCENARIO))
    simulate_in_process(cli_env, NIGHT, NIGHT)
    before = len(_audit(cli_env))
    out = tmp_path / "pdfs"
    _ok(cli_env, "documents", "export", str(out), "--client", "cl-ana")
    files = sorted(out.iterdir())
    assert files
    new = _audit(cli_env)[before:]
    assert new[0]["action"] == "documents_export"
    assert new[0]["outcome"] == f"exporting {len(files)} document(s)"
    renders = new[1:]
    assert renders
    assert {r["action"] for r in renders} <= {"render_pdf:bill", "render_pdf:superbill"}
    assert all(r["client_ids"] == ["cl-ana"] for r in new)
    assert all(r["account_id"] == "acct-sunrise" for r in new)
    assert "every link holds" in _ok(cli_env, "audit", "verify")
