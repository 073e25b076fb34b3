"""Schedules that fit many timezones, and the delivery sensor.

A `DailyPartitionsDefinition` has one timezone, so a schedule built from the partitions would
run every practice at the same instant. Instead both schedules tick every 15 minutes in UTC
(every zone's offset is a multiple of 15 minutes) and launch, for each night, the practices
whose 00:00 (bills) or 00:30 (AutoPay) has just passed, named in the run's tags.
"""

from datetime import UTC, datetime

import dagster as dg

from billing_pipeline.db.deliveries import due_deliveries, due_reshares
from billing_pipeline.db.store import list_accounts
from billing_pipeline.domain.schedule import Step, due_nights
from billing_pipeline.jobs import autopay_job, deliver_documents_job, nightly_billing_job
from billing_pipeline.partitions import ACCOUNTS_TAG, DATABASE_TAG
from billing_pipeline.resources.clock import Clock
from billing_pipeline.resources.database import BillingDatabase
from billing_pipeline.resources.notifier import Notifier

TICK_CRON = "*/15 * * * *"


def _requests(
    context: dg.ScheduleEvaluationContext, db: BillingDatabase, step: Step
) -> list[dg.RunRequest] | dg.SkipReason:
    tick = context.scheduled_execution_time or datetime.now(UTC)
    with db.engine.connect() as conn:
        accounts = [(a.id, a.timezone) for a in list_accounts(conn)]
    due = due_nights(accounts, tick.astimezone(UTC), step)
    if not due:
        return dg.SkipReason(f"no practice reaches its {step} step at {tick.isoformat()}")
    return [
        dg.RunRequest(
            run_key=f"{step}-{night.isoformat()}-{tick.astimezone(UTC).isoformat()}",
            partition_key=night.isoformat(),
            tags={ACCOUNTS_TAG: ",".join(ids)},
        )
        for night, ids in due.items()
    ]


@dg.schedule(
    job=nightly_billing_job,
    cron_schedule=TICK_CRON,
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
def nightly_billing_schedule(
    context: dg.ScheduleEvaluationContext, db: BillingDatabase
) -> list[dg.RunRequest] | dg.SkipReason:
    """Bills, superbills and statements at 00:00 in each practice's own zone."""
    return _requests(context, db, Step.BILLS)


@dg.schedule(
    job=autopay_job,
    cron_schedule=TICK_CRON,
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
def autopay_schedule(
    context: dg.ScheduleEvaluationContext, db: BillingDatabase
) -> list[dg.RunRequest] | dg.SkipReason:
    """AutoPay at 00:30 in each practice's own zone (never before that night's bills: the
    asset checks the night's bills step is recorded)."""
    return _requests(context, db, Step.AUTOPAY)


IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


@dg.sensor(
    job=deliver_documents_job,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def deliver_due_documents(
    context: dg.SensorEvaluationContext, db: BillingDatabase, clock: Clock, notifier: Notifier
) -> dg.RunRequest | dg.SkipReason:
    """Launches a delivery run when documents fall due, one at a time per billing database
    (a second run would find the documents done; this only saves the work)."""
    database = db.fingerprint()
    running = context.instance.get_runs_count(
        dg.RunsFilter(
            job_name=deliver_documents_job.name, statuses=IN_FLIGHT, tags={DATABASE_TAG: database}
        )
    )
    if running:
        return dg.SkipReason("a delivery run is already in flight")
    with db.engine.connect() as conn:
        due = due_deliveries(conn, clock.now_for, limit=1, outcome_wait=notifier.outcome_wait())
        again = due_reshares(conn, limit=1)
    if not due and not again:
        return dg.SkipReason("nothing is due")
    first = due[0].scheduled_at if due else again[0].delivery.scheduled_at
    return dg.RunRequest(tags={"billing/first_due": first.isoformat(), DATABASE_TAG: database})
