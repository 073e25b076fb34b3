"""`trail BILL_ID` tells each bill's story, and agrees with `report --json` in every public
scenario: the bill as reported, the attempts that covered it (ids, amounts, outcomes), its
delivery, the runs in the Dagster instance that made and charged it, and no PHI."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from dagster import DagsterInstance

from tests.conftest import CONTRACT
from tests.contract.runner import cli_in_process, report_of, simulate_in_process
from tests.simulated import Simulations

PUBLIC = sorted((CONTRACT / "scenarios").glob("*.expected.json")) + sorted(
    (CONTRACT / "scenarios" / "next").glob("*.expected.json")
)
REPORTED_BILL = ("id", "client_id", "session_ids", "amount_cents", "created_at", "status")
REPORTED_ATTEMPT = ("id", "client_id", "payer", "amount_cents", "attempted_at", "outcome")
REPORTED_DELIVERY = (
    "document_type",
    "document_id",
    "client_id",
    "recipient",
    "scheduled_at",
    "delivered_at",
    "bill_status_at_delivery",
)


def _trail(env: dict[str, str], bill_id: str, *extra: str) -> subprocess.CompletedProcess[str]:
    done = cli_in_process(env, "trail", bill_id, *extra)
    assert done.returncode == 0, done.stderr
    return done


def _phi(doc: dict[str, Any]) -> list[str]:
    """Names, emails, birth dates and diagnoses of the scenario's people."""
    out: list[str] = []
    for person in doc.get("clients", []) + doc.get("billing_contacts", []):
        out += [person["name"], person.get("email") or ""]
        out += [person.get("date_of_birth") or "", *person.get("diagnoses", [])]
    return [p for p in out if p and len(p) > 2]


@pytest.mark.slow
@pytest.mark.parametrize("expected_path", PUBLIC, ids=lambda p: p.name.split(".")[0])
def test_trail_of_each_bill_matches_the_report(
    expected_path: Path, backend: str, simulations: Simulations
) -> None:
    sim = simulations.get(
        expected_path.with_name(expected_path.name.split(".")[0] + ".json"), backend
    )
    report = sim.report
    assert report["bills"], "every public scenario makes bills"
    instance = DagsterInstance.from_config(sim.env["DAGSTER_HOME"])
    phi = _phi(sim.doc)
    attempts_by_id = {a["id"]: a for a in report["autopay_attempts"]}
    for bill in report["bills"]:
        done = _trail(sim.env, bill["id"], "--json")
        trail = json.loads(done.stdout)
        assert {k: trail["bill"][k] for k in REPORTED_BILL} == {k: bill[k] for k in REPORTED_BILL}
        assert sorted(s["session_id"] for s in trail["sessions"]) == bill["session_ids"]
        assert (
            sum(v["amount_cents"] for s in trail["sessions"] for v in s["services"])
            == bill["amount_cents"]
        )
        # Settings in force that night, each with where it came from.
        fields = {(s["scope"], s["field"]) for s in trail["settings"]}
        assert {("practice", "bill_creation"), ("client", "autopay_enabled")} <= fields
        assert all(s["source"] for s in trail["settings"])
        # The run that made it is in the Dagster instance.
        made = [r for r in trail["runs"] if r["step"] == "bills"]
        assert len(made) == 1 and made[0]["run_id"]
        assert instance.get_run_by_id(made[0]["run_id"]) is not None
        # Its attempts are the report's, with PaymentIntents; a paid bill has its payment.
        for attempt in trail["autopay_attempts"]:
            reported = attempts_by_id[attempt["id"]]
            assert {k: attempt[k] for k in REPORTED_ATTEMPT} == {
                k: reported[k] for k in REPORTED_ATTEMPT
            }
            assert attempt["run_id"] and instance.get_run_by_id(attempt["run_id"]) is not None
            if attempt["outcome"] == "succeeded":
                assert attempt["payment_intent_id"]
        if bill["status"] == "paid":
            assert [p["amount_cents"] for p in trail["payments"]] == [bill["amount_cents"]]
        else:
            assert trail["payments"] == []
        # Its delivery is the report's.
        reported_deliveries = [
            {k: d[k] for k in REPORTED_DELIVERY}
            for d in report["deliveries"]
            if d["document_type"] == "bill" and d["document_id"] == bill["id"]
        ]
        assert [{k: d[k] for k in REPORTED_DELIVERY} for d in trail["deliveries"]] == (
            reported_deliveries
        )
        for d in trail["deliveries"]:
            if d["delivered_at"] is not None:
                assert d["shares"] and d["shares"][0]["shared_at"] == d["delivered_at"]
        # The events are in time order; nothing personal in either output.
        instants = [e["at"] for e in trail["events"]]
        assert instants == sorted(instants)
        text = _trail(sim.env, bill["id"]).stdout
        assert f"{bill['id']}: client {bill['client_id']}" in text
        for word in phi:
            assert word not in done.stdout and word not in text, f"PHI in the trail of {bill['id']}"
    instance.dispose()


@pytest.mark.slow
def test_trail_of_an_unknown_bill_is_bad_input(backend: str, simulations: Simulations) -> None:
    sim = simulations.get(CONTRACT / "scenarios" / "daily_autopay.json", backend)
    for ref in ("bill-999999", "nonsense"):
        done = cli_in_process(sim.env, "trail", ref)
        assert done.returncode == 2
        assert "bill_id:" in done.stderr


@pytest.mark.slow
def test_the_trail_names_the_notification_message_the_client_received(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    """With SMTP set, a shared bill's trail gives the Message-ID of the email that went out
    (aiosmtpd on loopback), and the share and send instants."""
    from email import message_from_bytes

    from billing_pipeline.smtp_sink import SmtpSink

    scenario = CONTRACT / "scenarios" / "daily_autopay.json"
    assert cli_in_process(cli_env, "scenario", "load", str(scenario)).returncode == 0
    with SmtpSink(tmp_path / "emails") as sink:
        env = {**cli_env, "BILLING_SMTP_HOST": "127.0.0.1", "BILLING_SMTP_PORT": str(sink.port)}
        assert simulate_in_process(env, "2026-11-02", "2026-11-02") == []
    received = {
        message_from_bytes(p.read_bytes())["Message-ID"]
        for p in (tmp_path / "emails").glob("*.eml")
    }
    report = report_of(cli_env, run=cli_in_process)
    shared = [
        d["document_id"]
        for d in report["deliveries"]
        if d["document_type"] == "bill" and d["delivered_at"] is not None
    ]
    assert shared and received
    for bill_id in shared:
        trail = json.loads(_trail(cli_env, bill_id, "--json").stdout)
        [delivery] = trail["deliveries"]
        assert delivery["email"]["status"] == "sent"
        assert delivery["email"]["message_id"] in received
        assert delivery["email"]["sent_at"] is not None
        text = _trail(cli_env, bill_id).stdout
        assert f"Message-ID {delivery['email']['message_id']}" in text
        assert "notification email sent" in text
