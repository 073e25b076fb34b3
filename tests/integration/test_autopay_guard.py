"""The AutoPay anomaly guard through the real nightly chain (Dagster, localstripe, SQLite and
PostgreSQL), with the default thresholds: ten ordinary nights pass (the last two judged against
eight comparable nights), a night with a duplicated import (every session twice) is held for
that practice only, shown in the Dagster check and in `explain`, released by staff (who and
when recorded), and then charged once."""

from __future__ import annotations

import json
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from sqlalchemy import select

from billing_pipeline.db import models as m
from billing_pipeline.db.engine import dispose_engines, get_engine
from tests.contract.runner import cli_in_process, environment, report_of

NIGHTS = [date(2026, 11, 1) + timedelta(days=i) for i in range(11)]  # Nov 1..11
ODD_NIGHT = NIGHTS[-1]
BUSY = [f"cl-b{i}" for i in range(1, 5)]
CARD = {"card": "4242424242424242", "exp_month": 12, "exp_year": 2030}
DEFAULTS = {
    "share_bills": True,
    "bill_delay_minutes": 60,
    "share_superbills": False,
    "superbill_delay_minutes": 0,
    "share_statements": False,
    "statement_delay_minutes": 0,
}


def _account(account_id: str) -> dict[str, Any]:
    return {
        "id": account_id,
        "name": f"Practice {account_id}",
        "timezone": "America/New_York",
        "npi": "1234567893",
        "tax_id": "12-3456789",
        "settings": {
            "bill_creation": "daily",
            "superbill_day_of_month": 28,
            "autopay_enabled": True,
            "new_client_defaults": DEFAULTS,
        },
    }


def _client(client_id: str, account_id: str) -> dict[str, Any]:
    return {
        "id": client_id,
        "account_id": account_id,
        "name": f"Person {client_id[-2:].upper()} Example",
        "email": f"{client_id}@example.com",
        "date_of_birth": "1980-01-02",
        "created_at": "2026-09-01T12:00:00Z",
        "billing_contact_id": None,
        "diagnoses": ["F41.1"],
        "payment_method": CARD,
        "settings": {"autopay_enabled": True},
    }


def _session(session_id: str, client_id: str, day: date) -> dict[str, Any]:
    return {
        "id": session_id,
        "client_id": client_id,
        "starts_at": f"{day.isoformat()}T10:00:00-05:00",
        "place_of_service": "11",
        "services": [{"cpt": "90834", "units": 1, "fee_cents": 15000}],
    }


def scenario() -> dict[str, Any]:
    """acct-busy: four AutoPay clients, a session each every night; on the odd night the
    import ran twice (every session twice). acct-calm: one client, the same nights."""
    sessions = [_session(f"s-{c}-{d:%m%d}", c, d) for d in NIGHTS for c in BUSY]
    sessions += [_session(f"s-{c}-{ODD_NIGHT:%m%d}-again", c, ODD_NIGHT) for c in BUSY]
    sessions += [_session(f"s-cl-calm-{d:%m%d}", "cl-calm", d) for d in NIGHTS]
    return {
        "scenario": "autopay_guard",
        "description": "A duplicated import on one night of a practice with history.",
        "accounts": [_account("acct-busy"), _account("acct-calm")],
        "billing_contacts": [],
        "clients": [_client(c, "acct-busy") for c in BUSY] + [_client("cl-calm", "acct-calm")],
        "sessions": sessions,
    }


def _simulate(env: dict[str, str], first: date, last: date) -> list[dg.AssetCheckEvaluation]:
    """simulate first..last in this process; the guard's check evaluations of the runs."""
    from billing_pipeline.simulate import simulate

    with environment(env), dg.DagsterInstance.ephemeral() as instance:
        try:
            result = simulate(first, last, instance)
        finally:
            dispose_engines()
        assert result.success, result.problems or result.failed
        evaluations = [
            e.dagster_event.event_specific_data
            for run_id in result.run_ids
            for e in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
            if e.dagster_event is not None
        ]
        return [
            e
            for e in evaluations
            if isinstance(e, dg.AssetCheckEvaluation)
            and e.check_name == "autopay_nights_look_usual"
        ]


def _attempts(report: dict[str, Any], client_id: str) -> list[dict[str, Any]]:
    return [a for a in report["autopay_attempts"] if a["client_id"] == client_id]


def _odd(attempts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # AutoPay of the night of Nov 11 runs at 00:30 on Nov 12 in New York (05:30 UTC).
    return [a for a in attempts if a["attempted_at"].startswith("2026-11-12")]


@pytest.mark.slow
def test_a_duplicated_import_is_held_released_then_charged_once(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    path = tmp_path / "autopay_guard.json"
    path.write_text(json.dumps(scenario()))
    loaded = cli_in_process(cli_env, "scenario", "load", str(path))
    assert loaded.returncode == 0, loaded.stderr

    checks = _simulate(cli_env, NIGHTS[0], ODD_NIGHT)
    report = report_of(cli_env, run=cli_in_process)

    # Ten ordinary nights were charged (nights 9 and 10 judged against 8 nights, and passed).
    for c in BUSY:
        attempts = _attempts(report, c)
        assert [a["outcome"] for a in attempts] == ["succeeded"] * 10
        assert all(a["amount_cents"] == 15000 for a in attempts)
    # The odd night is held for acct-busy only: nothing charged there, acct-calm charged.
    assert _odd(_attempts(report, "cl-calm"))[0]["outcome"] == "succeeded"
    assert all(not _odd(_attempts(report, c)) for c in BUSY)
    odd_bills = [b for b in report["bills"] if b["created_at"].startswith("2026-11-12")]
    assert len(odd_bills) == 9
    assert [b["status"] for b in odd_bills if b["client_id"] in BUSY] == ["open"] * 8
    # Held bills are not shared as open while their AutoPay has not run.
    busy_odd_ids = {b["id"] for b in odd_bills if b["client_id"] in BUSY}
    assert all(
        d["delivered_at"] is None for d in report["deliveries"] if d["document_id"] in busy_odd_ids
    )

    # Shown in the Dagster UI (a WARN check naming the practice and night) and in explain.
    held = [e for e in checks if not e.passed]
    assert len(held) == 1
    assert held[0].severity == dg.AssetCheckSeverity.WARN
    assert held[0].metadata["held"].value == ["acct-busy 2026-11-11"]
    explained = cli_in_process(cli_env, "explain", "cl-b1", "--date", "2026-11-11")
    assert "held by the anomaly guard" in explained.stdout
    assert "$1,200.00" in explained.stdout and "median of $600.00" in explained.stdout
    assert "autopay release acct-busy 2026-11-11" in explained.stdout
    listed = cli_in_process(cli_env, "autopay", "holds")
    assert listed.stdout.count("was held") == 1, listed.stdout
    for word in ("Person", "Example", "@example.com", "F41.1", "1980-01-02"):
        assert word not in listed.stdout and word not in repr(held[0].metadata)

    # Run again before release: still held, still nothing charged.
    _simulate(cli_env, ODD_NIGHT, ODD_NIGHT)
    assert all(not _odd(_attempts(report_of(cli_env, run=cli_in_process), c)) for c in BUSY)

    # Staff release it: who and when are kept.
    bad = cli_in_process(cli_env, "autopay", "release", "acct-calm", "2026-11-11")
    assert bad.returncode == 2
    released = cli_in_process(
        cli_env, "autopay", "release", "acct-busy", "2026-11-11", "--by", "staff-7"
    )
    assert released.returncode == 0, released.stderr
    engine = get_engine(cli_env["BILLING_DATABASE_URL"])
    with engine.connect() as conn:
        hold = conn.execute(select(m.AutopayHold.__table__)).one()
    assert hold.released_by == "staff-7" and hold.released_at is not None
    assert hold.reasons == "total_too_high"

    # The night's next AutoPay run charges it, once, and a further run charges nothing more.
    for _ in range(2):
        _simulate(cli_env, ODD_NIGHT, ODD_NIGHT)
        report = report_of(cli_env, run=cli_in_process)
        for c in BUSY:
            odd = _odd(_attempts(report, c))
            assert [(a["amount_cents"], a["outcome"]) for a in odd] == [(30000, "succeeded")]
    assert all(
        b["status"] == "paid" for b in report["bills"] if b["created_at"].startswith("2026-11-12")
    )
    explained = cli_in_process(cli_env, "explain", "cl-b1", "--date", "2026-11-11")
    assert "released by staff-7" in explained.stdout
    dispose_engines()
