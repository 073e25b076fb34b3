"""Failures someone hears about: a run-failure sensor that records an alert for every failed
run (a `run_alerts` row and an error in the sensor's log) and emails it through the SMTP
settings when BILLING_ALERT_EMAIL and BILLING_SMTP_HOST are set. The alert names the job, the
partitions, the practice ids and the failed steps with their error types: never a message
that could quote a client."""

from collections.abc import Sequence
from datetime import UTC, datetime

import dagster as dg

from billing_pipeline.config import alert_email
from billing_pipeline.db.alerts import RunAlert, record_alert, set_email_status
from billing_pipeline.domain.notifications import Notification
from billing_pipeline.partitions import ACCOUNTS_TAG
from billing_pipeline.resources.database import BillingDatabase
from billing_pipeline.resources.notifier import EmailNotSent, Notifier

_PARTITION = "dagster/partition"
_RANGE = ("dagster/asset_partition_range_start", "dagster/asset_partition_range_end")


def alert_of(run: dg.DagsterRun, failures: Sequence[dg.DagsterEvent]) -> RunAlert:
    """The alert of a failed run, from its tags and its step failures (error types only)."""
    tags = run.tags
    if _PARTITION in tags:
        partitions = tags[_PARTITION]
    elif all(t in tags for t in _RANGE):
        partitions = f"{tags[_RANGE[0]]}..{tags[_RANGE[1]]}"
    else:
        partitions = "none"
    accounts = tuple(a for a in tags.get(ACCOUNTS_TAG, "").split(",") if a)
    steps = []
    for event in failures:
        error = getattr(event.event_specific_data, "error", None)
        # Dagster wraps the step's own exception: name the innermost cause's type.
        while error is not None and error.cause is not None:
            error = error.cause
        steps.append(f"{event.step_key} ({error.cls_name if error else 'unknown error'})")
    practices = ", ".join(accounts) if accounts else "every practice"
    message = (
        f"Dagster run {run.run_id} of job {run.job_name} failed; partitions {partitions}; "
        f"practices {practices}; failed steps: {', '.join(steps) or 'none (the run itself)'}. "
        "The run's logs in the Dagster UI say more; `billing-pipeline` commands and the "
        "night ledger show what each practice's night still needs."
    )
    return RunAlert(run.run_id, run.job_name, partitions, accounts, tuple(steps), message)


@dg.run_failure_sensor(
    name="alert_on_failed_runs",
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description="Every failed run of this code location is recorded in the billing database "
    "(`run_alerts`), logged, and emailed to BILLING_ALERT_EMAIL through the SMTP settings when "
    "both are set: the job, the nights, the practice ids and the failed steps, never a "
    "client's data.",
)
def alert_on_failed_runs(
    context: dg.RunFailureSensorContext, db: BillingDatabase, notifier: Notifier
) -> None:
    """Record, log and email the alert of a failed run (once per run)."""
    alert = alert_of(context.dagster_run, context.get_step_failure_events())
    to = alert_email()
    emailing = bool(to) and notifier.email_configured()
    status = "pending" if emailing else "not_configured"
    context.log.error(f"run alert: {alert.message}")
    try:
        new = db.transact(lambda conn: record_alert(conn, alert, datetime.now(UTC), status))
    except Exception as exc:
        # The billing database may be what failed the run: the alert still goes by email
        # (by type only: a database error's text could quote a row).
        context.log.error(f"run alert not recorded in run_alerts ({type(exc).__name__})")
        new, recorded = True, False
    else:
        recorded = True
    if not (new and emailing):
        return
    try:
        notifier.send(
            to,
            "billing_pipeline",
            Notification(
                subject=f"billing_pipeline: run of {alert.job_name} failed ({alert.partitions})",
                body=f"Hello,\n\n{alert.message}\n",
            ),
            f"<run-alert-{alert.run_id}@billing-pipeline>",
        )
        status = "sent"
    except EmailNotSent as exc:
        context.log.warning(f"run alert email not sent: {exc}")
        status = "failed"
    if recorded:
        db.transact(lambda conn: set_email_status(conn, alert.run_id, status))
