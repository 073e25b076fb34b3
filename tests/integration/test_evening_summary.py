"""The evening summary: at the practice's local hour, tonight's preview goes by SMTP (aiosmtpd
on loopback) to the practice's staff address, once per night, with client ids and amounts
only; a failed send is tried again on the next call. SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime
from email import message_from_bytes
from email.message import Message
from pathlib import Path

import pytest

from billing_pipeline.db.engine import dispose_engines, get_engine
from billing_pipeline.domain.summary import evening_night
from billing_pipeline.resources.notifier import Notifier
from billing_pipeline.services.summary import send_due_summaries
from billing_pipeline.smtp_sink import SmtpSink
from tests.conftest import CONTRACT
from tests.contract.runner import cli_in_process, simulate_in_process

# Los Angeles is UTC-8 on 2026-11-03: 17:59 and 18:05 local.
BEFORE = datetime(2026, 11, 4, 1, 59, tzinfo=UTC)
AFTER = datetime(2026, 11, 4, 2, 5, tzinfo=UTC)


def test_the_summary_is_due_from_the_local_hour() -> None:
    assert evening_night(BEFORE, "America/Los_Angeles", 18) is None
    assert str(evening_night(AFTER, "America/Los_Angeles", 18)) == "2026-11-03"
    assert str(evening_night(AFTER, "Asia/Kolkata", 7)) == "2026-11-04"  # 07:35 there
    assert evening_night(AFTER, "Asia/Kolkata", 8) is None


def _messages(folder: Path) -> list[Message]:
    return [message_from_bytes(p.read_bytes()) for p in sorted(folder.glob("*.eml"))]


@pytest.mark.slow
def test_the_evening_summary_goes_to_staff_once_with_ids_and_amounts(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    scenario = CONTRACT / "scenarios" / "daily_autopay.json"
    assert cli_in_process(cli_env, "scenario", "load", str(scenario)).returncode == 0
    assert simulate_in_process(cli_env, "2026-10-20", "2026-11-02") == []
    staff = cli_in_process(
        cli_env, "summary", "staff", "acct-sunrise", "--email", "office@sunrise.test"
    )
    assert staff.returncode == 0, staff.stderr
    engine = get_engine(cli_env["BILLING_DATABASE_URL"])

    # A server that is not there: nothing sent, tried again on the next call.
    down = Notifier(smtp_host="127.0.0.1", smtp_port=9)
    assert send_due_summaries(engine, down, AFTER, "db").failed == 1

    with SmtpSink(tmp_path / "emails") as sink:
        notifier = Notifier(smtp_host="127.0.0.1", smtp_port=sink.port)
        assert send_due_summaries(engine, notifier, BEFORE, "db").sent == 0  # before 18:00
        assert send_due_summaries(engine, notifier, AFTER, "db").sent == 1
        assert send_due_summaries(engine, notifier, AFTER, "db").sent == 0  # once a night
    [message] = _messages(tmp_path / "emails")
    assert message["To"] == "office@sunrise.test"
    assert message["Message-ID"] == "<summary-acct-sunrise-2026-11-03.db@billing-pipeline.invalid>"
    body = message.get_payload(decode=True).decode()
    assert "Preview of practice acct-sunrise, night of 2026-11-03" in body
    assert "client cl-ana: $180.00 for s-ana-1103" in body
    for word in ("Ana Torres", "ana@example.com", "F41.1", "1988-04-12", "Ben"):
        assert word not in body
    dispose_engines()
