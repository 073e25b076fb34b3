"""The nightly job on the dagster-celery executor, for test_celery_executor.py: the production
assets, checks and resources (`definitions.defs`), its selection, each step a Celery task that a
worker runs. The worker imports this module by name (a reconstructable job)."""

import dagster as dg
from dagster_celery import celery_executor

from billing_pipeline.assets.chain import AT_MIDNIGHT
from billing_pipeline.definitions import defs

CELERY_JOB = "nightly_billing_job_celery"


def celery_nightly_job() -> dg.JobDefinition:
    job = dg.define_asset_job(CELERY_JOB, selection=list(AT_MIDNIGHT), executor_def=celery_executor)
    return dg.Definitions.merge(defs, dg.Definitions(jobs=[job])).resolve_job_def(CELERY_JOB)
