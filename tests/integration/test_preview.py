"""`preview ACCOUNT --night D` before the night, then the real night: the night makes exactly
what the preview said (bills, superbills, statements, AutoPay charges, deliveries), and the
preview wrote nothing (the row count of every table unchanged) and called nobody (it runs
with Stripe unreachable and no key). SQLite and PostgreSQL."""

from __future__ import annotations

import json
from collections import Counter
from datetime import date, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from billing_pipeline.db.engine import dispose_engines, get_engine
from billing_pipeline.db.models import AuditLog, Base
from tests.conftest import CONTRACT
from tests.contract.runner import cli_in_process, report_of, simulate_in_process

SCENARIOS = CONTRACT / "scenarios"
NO_STRIPE = {"STRIPE_API_KEY": "", "STRIPE_API_BASE": "http://127.0.0.1:9"}  # nobody there


def _counts(engine: Engine) -> dict[str, int]:
    """Rows per billing table. The audit log is left out: a preview is a read of client
    data and is audited like any other (its row is checked apart)."""
    with engine.connect() as conn:
        return {
            t.name: int(conn.execute(select(func.count()).select_from(t)).scalar_one())
            for t in Base.metadata.sorted_tables
            if t.name != "audit_log"
        }


def _audited(engine: Engine, action: str) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                select(func.count()).select_from(AuditLog).where(AuditLog.action == action)
            ).scalar_one()
        )


def _multiset(items: list[dict[str, Any]], keys: tuple[str, ...]) -> Counter[str]:
    return Counter(json.dumps({k: i[k] for k in keys}, sort_keys=True) for i in items)


def _made_by(report: dict[str, Any], before: dict[str, Any], name: str) -> list[dict[str, Any]]:
    """The items of `name` that the night added to the report."""
    return report[name][len(before[name]) :]


def _preview_then_night(env: dict[str, str], account: str, night: date) -> dict[str, Any]:
    engine = get_engine(env["BILLING_DATABASE_URL"])
    counts = _counts(engine)
    previews_audited = _audited(engine, "preview")
    before = report_of(env, run=cli_in_process)
    done = cli_in_process({**env, **NO_STRIPE}, "preview", account, "--night", str(night), "--json")
    assert done.returncode == 0, done.stderr
    preview = json.loads(done.stdout)
    text = cli_in_process({**env, **NO_STRIPE}, "preview", account, "--night", str(night))
    assert text.returncode == 0, text.stderr
    assert f"Preview of practice {account}, night of {night}" in text.stdout
    assert _counts(engine) == counts, "the preview wrote something"
    assert _audited(engine, "preview") == previews_audited + 2  # each preview shown is audited
    assert report_of(env, run=cli_in_process) == before

    assert simulate_in_process(env, str(night), str(night)) == []
    after = report_of(env, run=cli_in_process)
    bill_keys = ("client_id", "session_ids", "amount_cents", "created_at")
    assert _multiset(preview["bills"], bill_keys) == _multiset(
        _made_by(after, before, "bills"), bill_keys
    )
    for name, keys in (
        ("superbills", ("client_id", "month", "session_ids", "created_at")),
        ("statements", ("client_id", "month", "created_at")),
        ("deliveries", ("document_type", "client_id", "recipient", "scheduled_at")),
    ):
        assert _multiset(preview[name], keys) == _multiset(_made_by(after, before, name), keys)
    charged = [a for a in preview["autopay_attempts"] if a["charged"]]
    attempt_keys = ("client_id", "payer", "amount_cents", "attempted_at")
    assert _multiset(charged, attempt_keys) == _multiset(
        _made_by(after, before, "autopay_attempts"), attempt_keys
    )
    assert preview["figures"]["bills"] == len(preview["bills"])
    assert (
        preview["diff"]["bills"]
        == preview["figures"]["bills"] - (preview["previous_night"]["bills"])
    )
    assert all(b["id"] is None for b in preview["bills"])
    return preview


@pytest.mark.slow
def test_a_preview_says_what_the_night_makes_and_writes_nothing(
    cli_env: dict[str, str],
) -> None:
    loaded = cli_in_process(cli_env, "scenario", "load", str(SCENARIOS / "daily_autopay.json"))
    assert loaded.returncode == 0, loaded.stderr
    assert simulate_in_process(cli_env, "2026-10-20", "2026-11-02") == []
    previews = [
        _preview_then_night(cli_env, "acct-sunrise", date(2026, 11, 3) + timedelta(days=i))
        for i in range(2)
    ]
    # 11-03: bills, one client charged by AutoPay; 11-04 (the superbill day follows).
    assert previews[0]["figures"]["bills"] >= 1
    assert previews[0]["figures"]["autopay_charges"] == 1
    gates = {a["client_id"]: a["stopped_by"] for a in previews[0]["autopay_attempts"]}
    assert gates["cl-ana"] is None  # charged
    assert gates["cl-ben"].startswith("skipped_")  # AutoPay off: the gate that stops it
    assert previews[1]["figures"]["superbills"] >= 1
    assert not previews[0]["guard"]["would_hold"]
    # Ids and amounts only.
    text = cli_in_process(cli_env, "preview", "acct-sunrise", "--night", "2026-11-05").stdout
    for word in ("Ana Torres", "ana@example.com", "F41.1", "1988-04-12"):
        assert word not in text
    unknown = cli_in_process(cli_env, "preview", "acct-nobody")
    assert unknown.returncode == 2 and "account_id: no account" in unknown.stderr
    dispose_engines()


@pytest.mark.slow
def test_a_preview_of_a_monthly_month_end_with_billing_contacts(
    cli_env: dict[str, str],
) -> None:
    scenario = SCENARIOS / "monthly_billing_contacts.json"
    loaded = cli_in_process(cli_env, "scenario", "load", str(scenario))
    assert loaded.returncode == 0, loaded.stderr
    assert simulate_in_process(cli_env, "2026-10-01", "2026-10-30") == []
    account = json.loads(scenario.read_text())["accounts"][0]["id"]
    preview = _preview_then_night(cli_env, account, date(2026, 10, 31))
    assert preview["figures"]["bills"] >= 1
    assert preview["figures"]["statements"] >= 1  # 00:00 on the 1st
    dispose_engines()
