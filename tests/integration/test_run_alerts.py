"""The run-failure sensor: a real run that fails (finance_daily_job on a billing database that
was never migrated) is recorded as an alert in `run_alerts`, once, naming the job, the
partition and the practice ids, and emailed through SMTP to BILLING_ALERT_EMAIL (aiosmtpd on
loopback); never a client's data. On SQLite and PostgreSQL."""

from __future__ import annotations

from email import message_from_bytes
from pathlib import Path

import dagster as dg
import pytest
from sqlalchemy import select

from billing_pipeline.alerts import alert_on_failed_runs
from billing_pipeline.db import models as m
from billing_pipeline.db.engine import get_engine
from billing_pipeline.definitions import defs
from billing_pipeline.partitions import ACCOUNTS_TAG
from billing_pipeline.resources.database import BillingDatabase
from billing_pipeline.resources.notifier import Notifier
from billing_pipeline.smtp_sink import SmtpSink


def test_a_failed_run_is_recorded_logged_and_emailed_once(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The failing run's billing database: a file that was never migrated (Dagster's resource
    # refuses it, naming `billing-pipeline db upgrade`).
    monkeypatch.setenv("BILLING_DATABASE_URL", f"sqlite:///{tmp_path / 'never_migrated.db'}")
    monkeypatch.setenv("BILLING_ALERT_EMAIL", "oncall@practice.example")
    with dg.instance_for_test() as instance:
        failed = defs.resolve_job_def("finance_daily_job").execute_in_process(
            instance=instance,
            partition_key="2026-11-03",
            tags={ACCOUNTS_TAG: "acct-sunrise,acct-harbor"},
            raise_on_error=False,
        )
        assert not failed.success
        run = instance.get_run_by_id(failed.run_id)
        assert run is not None and run.status == dg.DagsterRunStatus.FAILURE

        with SmtpSink(tmp_path / "emails") as sink:
            resources = {
                "db": BillingDatabase(url=database_url),
                "notifier": Notifier(smtp_host="127.0.0.1", smtp_port=sink.port),
            }
            for _ in range(2):  # a tick that runs again records and sends nothing twice
                context = dg.build_run_status_sensor_context(
                    sensor_name="alert_on_failed_runs",
                    dagster_event=failed.get_run_failure_event(),
                    dagster_instance=instance,
                    dagster_run=run,
                    resources=resources,
                ).for_run_failure()
                alert_on_failed_runs(context)
            emails = sorted((tmp_path / "emails").glob("*.eml"))

    with get_engine(database_url).connect() as conn:
        alerts = conn.execute(select(m.RunAlert.__table__)).mappings().all()
    assert len(alerts) == 1
    [alert] = alerts
    assert alert["run_id"] == failed.run_id
    assert alert["job_name"] == "finance_daily_job"
    assert alert["partitions"] == "2026-11-03"
    assert alert["account_ids"] == "acct-sunrise,acct-harbor"
    assert alert["failed_steps"] == "finance_daily (SchemaBehind)"
    assert alert["email_status"] == "sent"
    for words in ("finance_daily_job", "2026-11-03", "acct-sunrise, acct-harbor", "SchemaBehind"):
        assert words in alert["message"]

    assert len(emails) == 1
    email = message_from_bytes(emails[0].read_bytes())
    assert email["To"] == "oncall@practice.example"
    assert "finance_daily_job" in email["Subject"] and "2026-11-03" in email["Subject"]
    body = email.get_payload(decode=True).decode()
    assert failed.run_id in body and "acct-harbor" in body


def test_without_an_alert_address_the_alert_is_recorded_and_not_emailed(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BILLING_DATABASE_URL", f"sqlite:///{tmp_path / 'never_migrated.db'}")
    monkeypatch.delenv("BILLING_ALERT_EMAIL", raising=False)
    with dg.instance_for_test() as instance:
        failed = defs.resolve_job_def("finance_daily_job").execute_in_process(
            instance=instance, partition_key="2026-11-04", raise_on_error=False
        )
        run = instance.get_run_by_id(failed.run_id)
        assert run is not None
        context = dg.build_run_status_sensor_context(
            sensor_name="alert_on_failed_runs",
            dagster_event=failed.get_run_failure_event(),
            dagster_instance=instance,
            dagster_run=run,
            resources={"db": BillingDatabase(url=database_url), "notifier": Notifier()},
        ).for_run_failure()
        alert_on_failed_runs(context)
    with get_engine(database_url).connect() as conn:
        [alert] = conn.execute(select(m.RunAlert.__table__)).mappings().all()
    assert alert["email_status"] == "not_configured"
    assert alert["account_ids"] == ""
    assert "every practice" in alert["message"]


def test_when_the_billing_database_is_what_failed_the_alert_still_goes_by_email(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = f"sqlite:///{tmp_path / 'never_migrated.db'}"
    monkeypatch.setenv("BILLING_DATABASE_URL", broken)
    monkeypatch.setenv("BILLING_ALERT_EMAIL", "oncall@practice.example")
    with dg.instance_for_test() as instance:
        failed = defs.resolve_job_def("finance_daily_job").execute_in_process(
            instance=instance, partition_key="2026-11-05", raise_on_error=False
        )
        run = instance.get_run_by_id(failed.run_id)
        assert run is not None
        with SmtpSink(tmp_path / "emails") as sink:
            context = dg.build_run_status_sensor_context(
                sensor_name="alert_on_failed_runs",
                dagster_event=failed.get_run_failure_event(),
                dagster_instance=instance,
                dagster_run=run,
                resources={
                    "db": BillingDatabase(url=broken),
                    "notifier": Notifier(smtp_host="127.0.0.1", smtp_port=sink.port),
                },
            ).for_run_failure()
            alert_on_failed_runs(context)
        [email] = (tmp_path / "emails").glob("*.eml")
    assert failed.run_id in email.read_text()
