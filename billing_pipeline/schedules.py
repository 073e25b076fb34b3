"""The catch-up sensor that launches every practice's nights, the ledger's schedule, and the
delivery sensor.

What runs is decided from the database, not from which tick fired (DESIGN invariant 8): every 30
seconds (BILLING_CATCHUP_INTERVAL_SECONDS) `launch_due_nights` reads, for each practice, the steps
of its nights whose instant has passed (00:00 for bills, superbills and statements; 00:30 for
AutoPay, in the practice's own zone) and which are not recorded done, and launches the first of
them, in order, for the practices that have one. A daemon that was down three days catches up by
itself as soon as it is back; a failed step is launched again after a backoff, a bounded number of
times, then shown failed in `night_ledger`; a night past the horizon is shown missed, never launched
on its own.
"""

import hashlib
import json
import warnings
from datetime import UTC, datetime, timedelta
from functools import partial

import dagster as dg

from billing_pipeline.assets.ledger import STEP_TAG, running_steps
from billing_pipeline.config import catch_up_interval_seconds, catch_up_policy
from billing_pipeline.db.deliveries import due_deliveries, due_reshares
from billing_pipeline.domain.schedule import Step, to_launch
from billing_pipeline.jobs import (
    autopay_job,
    deliver_documents_job,
    finance_daily_job,
    night_ledger_job,
    nightly_billing_job,
)
from billing_pipeline.partitions import (
    ACCOUNTS_TAG,
    DATABASE_TAG,
    NIGHTS_TAG,
    PRACTICES_TAG,
    nights_label,
    practices_label,
)
from billing_pipeline.resources.clock import Clock
from billing_pipeline.resources.database import BillingDatabase
from billing_pipeline.resources.notifier import Notifier
from billing_pipeline.services.catchup import night_states, record_launch

# Dagster 1.13's own `SensorDefinition.with_attributes` (called when the repository binds our
# sensors to their jobs) passes `owners=[]` on, which warns that the beta `owners` parameter is
# used at every code load. We pass no owners; only that one notice is silenced.
warnings.filterwarnings(
    "ignore",
    category=dg.BetaWarning,
    message=r"Parameter `owners` of initializer `SensorDefinition\.__init__` is currently in beta",
)

JOB_OF_STEP = {Step.BILLS: nightly_billing_job, Step.AUTOPAY: autopay_job}
TRY_TAG = "billing/try"


LAUNCH_DUE_NIGHTS_DESCRIPTION = (
    "Every 30 s (BILLING_CATCHUP_INTERVAL_SECONDS): for each practice, in its own timezone, the "
    "steps of its nights whose time has come and that the billing database does not record "
    "done. At 00:00 local after a night: "
    "eligible sessions, settings, bills, superbills and statements (nightly_billing_job); at "
    "00:30 local: AutoPay, the delivery queue and the Stripe reconciliation (autopay_job). A "
    "practice in Los Angeles and one in New York get their runs three hours apart, each run "
    "tagged with its night and practices. Bills before AutoPay, night N before N+1; a failed "
    "step is tried again after a backoff; nights past the catch-up horizon are shown missed in "
    "night_ledger for an analyst to backfill, never launched by themselves."
)


@dg.sensor(
    jobs=[nightly_billing_job, autopay_job],
    minimum_interval_seconds=catch_up_interval_seconds(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=LAUNCH_DUE_NIGHTS_DESCRIPTION,
)
def launch_due_nights(
    context: dg.SensorEvaluationContext, db: BillingDatabase, clock: Clock
) -> dg.SensorResult:
    """Launches, for every practice, the first step of its nights that is due and not done:
    the 00:00 step (`nightly_billing_job`) before AutoPay (`autopay_job`), night N before
    night N+1, one run per night and step for the practices named in its tags. The tries are
    recorded in the database; the cursor keeps the last evaluation's instant and launches."""
    now = clock.now_for("UTC").astimezone(UTC)
    policy = catch_up_policy()
    database = db.fingerprint()
    running = running_steps(context.instance, database)
    with db.engine.connect() as conn:
        states = night_states(conn, now, policy, running, with_missed=False)
    launches = to_launch(states)
    requests = []
    for (night, step), account_ids in launches.items():
        digest = hashlib.sha256(",".join(account_ids).encode()).hexdigest()[:12]
        key = f"{step}-{night.isoformat()}-{digest}-{now.isoformat()}"
        tries = db.transact(
            partial(record_launch, ids=account_ids, night=night, step=step, at=now, key=key)
        )
        requests.append(
            dg.RunRequest(
                run_key=key,
                job_name=JOB_OF_STEP[step].name,
                partition_key=night.isoformat(),
                tags={
                    ACCOUNTS_TAG: ",".join(account_ids),
                    STEP_TAG: step.value,
                    DATABASE_TAG: database,
                    TRY_TAG: str(tries),
                    NIGHTS_TAG: nights_label([night]),
                    PRACTICES_TAG: practices_label(account_ids),
                },
            )
        )
    cursor = json.dumps(
        {"evaluated_at": now.isoformat(), "launched": [r.run_key for r in requests]}
    )
    if not requests:
        return dg.SensorResult(skip_reason=f"no step due at {now.isoformat()}", cursor=cursor)
    return dg.SensorResult(run_requests=requests, cursor=cursor)


@dg.schedule(
    job=night_ledger_job,
    cron_schedule="*/15 * * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Every 15 minutes (UTC): refreshes night_ledger, the state of every practice's "
    "00:00 and 00:30 steps, night by night, in each practice's own timezone. It launches no "
    "billing: the catch-up sensor launch_due_nights does.",
)
def night_ledger_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    """Refreshes `night_ledger` every 15 minutes. A tick missed loses nothing: the ledger is
    read from the database each time."""
    tick = context.scheduled_execution_time or datetime.now(UTC)
    return dg.RunRequest(run_key=f"ledger-{tick.isoformat()}")


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
    description="Every minute: shares the documents whose time has come (each made at 00:00 "
    "in its practice's zone, due after the client's delay; a bill due after its night's 00:30 "
    "AutoPay waits for AutoPay's outcome), one delivery run at a time per billing database.",
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


@dg.schedule(
    job=finance_daily_job,
    cron_schedule="0 18 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Every day at 18:00 UTC, finance's figures of yesterday's service date: by "
    "then every practice's night has run in its own timezone (bills at 00:00 local, AutoPay at "
    "00:30 local, at most 12:30 UTC at UTC-12) and the bills AutoPay waited for are shared. "
    "Running a night again replaces its rows.",
)
def finance_daily_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    """Yesterday's service date's finance figures."""
    scheduled = context.scheduled_execution_time or datetime.now(UTC)
    night = (scheduled.astimezone(UTC).date() - timedelta(days=1)).isoformat()
    return dg.RunRequest(run_key=f"finance_daily:{night}", partition_key=night)
