"""The code location: one Definitions object, assembled here and nowhere else."""

import dagster as dg

from billing_pipeline.alerts import alert_on_failed_runs
from billing_pipeline.assets.chain import NIGHT_CHAIN
from billing_pipeline.assets.finance import finance_daily
from billing_pipeline.assets.ledger import night_ledger
from billing_pipeline.assets.preview import night_preview
from billing_pipeline.checks.documents import DOCUMENT_CHECKS
from billing_pipeline.checks.freshness import FRESHNESS_CHECKS
from billing_pipeline.checks.suites import EXPECTATION_CHECKS
from billing_pipeline.jobs import (
    autopay_job,
    deliver_documents_job,
    finance_daily_job,
    night_ledger_job,
    nightly_billing_job,
    nightly_chain_job,
)
from billing_pipeline.resources.clock import Clock
from billing_pipeline.resources.database import BillingDatabase
from billing_pipeline.resources.notifier import Notifier
from billing_pipeline.resources.payments import Payments
from billing_pipeline.resources.renderer import DocumentRenderer
from billing_pipeline.schedules import (
    deliver_due_documents,
    finance_daily_schedule,
    launch_due_nights,
    night_ledger_schedule,
)

defs = dg.Definitions(
    assets=[*NIGHT_CHAIN, finance_daily, night_ledger, night_preview],
    asset_checks=[*DOCUMENT_CHECKS, *FRESHNESS_CHECKS, *EXPECTATION_CHECKS],
    jobs=[
        nightly_billing_job,
        autopay_job,
        nightly_chain_job,
        deliver_documents_job,
        night_ledger_job,
        finance_daily_job,
    ],
    schedules=[night_ledger_schedule, finance_daily_schedule],
    sensors=[launch_due_nights, deliver_due_documents, alert_on_failed_runs],
    # Database-bound steps: every run executes in process, the jobs of jobs.py and the runs a
    # backfill launched from the UI alike (a process per step would add seconds each).
    executor=dg.in_process_executor,
    resources={
        "db": BillingDatabase(),
        "clock": Clock(),
        # The Stripe key is read from STRIPE_API_KEY by the resource when AutoPay first calls
        # Stripe (not an EnvVar: an unset one would refuse the whole job, bills included).
        "payments": Payments(),
        "notifier": Notifier(),
        "renderer": DocumentRenderer(),
    },
)
