"""Jobs: the 00:00 step, the 00:30 step, the whole chain (backfills, simulate) and delivery.

These assets are database-bound, so every job runs in process: the multiprocess executor
would add ~3 s per step for nothing.
"""

from datetime import UTC, datetime

import dagster as dg
from sqlalchemy import Connection, select

from billing_pipeline.assets.chain import AT_AUTOPAY, AT_MIDNIGHT, NIGHT_CHAIN
from billing_pipeline.assets.finance import finance_daily
from billing_pipeline.assets.ledger import night_ledger
from billing_pipeline.checks.freshness import FRESHNESS_CHECKS
from billing_pipeline.checks.suites import bills_meet_expectations
from billing_pipeline.db import models as m
from billing_pipeline.db.deliveries import (
    DueDelivery,
    Reshare,
    due_deliveries,
    due_reshares,
    mark_delivered,
    mark_reshared,
)
from billing_pipeline.resources.clock import Clock
from billing_pipeline.resources.database import BillingDatabase
from billing_pipeline.resources.notifier import Notifier
from billing_pipeline.resources.renderer import DocumentRenderer
from billing_pipeline.services.documents import render_share
from billing_pipeline.services.emails import send_due_emails

# The freshness checks judge the nights done against the wall clock: the ledger's job runs them
# every 15 minutes; a night's own run (on either clock) does not.
FRESHNESS = dg.AssetSelection.checks(*FRESHNESS_CHECKS)

nightly_billing_job = dg.define_asset_job(
    "nightly_billing_job",
    selection=dg.AssetSelection.assets(*AT_MIDNIGHT) - FRESHNESS,
    executor_def=dg.in_process_executor,
    description="00:00 in each practice's zone: eligible sessions, settings, bills, "
    "superbills and statements for the night.",
)

autopay_job = dg.define_asset_job(
    "autopay_job",
    # The bills' blocking suite runs first in the same run: a night whose bills disagree
    # with their lines is not charged.
    selection=(dg.AssetSelection.assets(*AT_AUTOPAY) - FRESHNESS)
    | dg.AssetSelection.checks(bills_meet_expectations),
    executor_def=dg.in_process_executor,
    description="00:30 in each practice's zone: the bills' expectations (blocking), AutoPay, "
    "then release the night's deliveries and compare Stripe's charges with our payments for "
    "finance.",
)

nightly_chain_job = dg.define_asset_job(
    "nightly_chain_job",
    selection=dg.AssetSelection.assets(*NIGHT_CHAIN) - FRESHNESS,
    executor_def=dg.in_process_executor,
    description="The whole night in one run, for backfills and `simulate`: each asset walks "
    "the nights in order, and every rule that looks at time looks at the night's own instants.",
)

night_ledger_job = dg.define_asset_job(
    "night_ledger_job",
    # With the freshness checks of the night's assets: both read the nights done on the wall
    # clock, every 15 minutes.
    selection=dg.AssetSelection.assets(night_ledger) | FRESHNESS,
    executor_def=dg.in_process_executor,
    description="The ledger of every practice's night steps and its check, and whether each "
    "practice's newest night billed and charged is last night (newest_night_is_recent).",
)

finance_daily_job = dg.define_asset_job(
    "finance_daily_job",
    selection=[finance_daily],
    executor_def=dg.in_process_executor,
    description="Finance's figures of a night per practice (bills, AutoPay collected, declined "
    "and needing action, open balance, documents shared), once every practice's night and its "
    "deliveries are done (`finance_daily_schedule`).",
)

DELIVERY_BATCH = 5000


def _render(
    context: dg.OpExecutionContext,
    db: BillingDatabase,
    renderer: DocumentRenderer,
    delivery_id: int,
    revision: int,
) -> None:
    """The share is made whatever happens here: a PDF that could not be rendered now is
    rendered, as it stood when shared, when it is first asked for."""
    try:
        render_share(db.engine, renderer, delivery_id, revision, f"dagster-run:{context.run_id}")
    except Exception as exc:  # reported by type: a message could quote a client
        context.log.warning(
            f"delivery {delivery_id}: its PDF was not rendered ({type(exc).__name__}); "
            "it will be rendered when asked for"
        )


@dg.op
def share_due_documents(
    context: dg.OpExecutionContext,
    db: BillingDatabase,
    clock: Clock,
    notifier: Notifier,
    renderer: DocumentRenderer,
) -> dg.Output[int]:
    """Share every document whose time has come, once: the delivery row is updated only while
    still undelivered, so a second run finds it done. A bill is shared as it stands then, and
    not while an AutoPay attempt on it is in flight (up to the notifier's wait); a bill shared
    before its outcome was known is shared again once paid. Each share's PDF is rendered as
    it stood (when the renderer renders at the share), and each first share's notification
    email is sent once (a failed one waits for a later run)."""
    wait = notifier.outcome_wait()
    with db.engine.connect() as conn:
        due = due_deliveries(conn, clock.now_for, limit=DELIVERY_BATCH, outcome_wait=wait)
        reshares = due_reshares(conn, limit=DELIVERY_BATCH)
    shared = 0
    for delivery in due:
        at = delivery.scheduled_at if clock.logical else datetime.now(UTC)

        def write(conn: Connection, d: DueDelivery = delivery, t: datetime = at) -> bool:
            done = mark_delivered(conn, d, t, wait)
            if done:
                status = conn.execute(
                    select(m.Delivery.bill_status_at_delivery).where(m.Delivery.id == d.id)
                ).scalar_one()
                notifier.share(conn, d, t, bill_status=status)
            return done

        if db.transact(write):
            shared += 1
            if renderer.render_on_share:
                _render(context, db, renderer, delivery.id, 0)
    reshared = 0
    for reshare in reshares:
        now = datetime.now(UTC)

        def write_again(conn: Connection, r: Reshare = reshare, t: datetime = now) -> bool:
            done = mark_reshared(conn, r.delivery.id, t)
            if done:
                notifier.share(conn, r.delivery, t, revision=1, bill_status=r.bill_status)
            return done

        if db.transact(write_again):
            reshared += 1
            if renderer.render_on_share:
                _render(context, db, renderer, reshare.delivery.id, 1)
    emails = send_due_emails(db, notifier)
    context.log.info(
        f"shared {shared} of {len(due)} due documents; shared {reshared} bill(s) again now "
        f"that AutoPay settled them; emails: {emails.sent} sent, {emails.failed_will_retry} "
        f"to retry, {emails.failed_for_good} failed, {emails.no_address} without an address"
        + (
            "; no SMTP host is set (BILLING_SMTP_HOST): emails wait"
            if emails.smtp_not_configured
            else ""
        )
    )
    return dg.Output(
        shared,
        metadata={
            "due": len(due),
            "shared": shared,
            "shared_again": reshared,
            "emails_sent": emails.sent,
            "emails_to_retry": emails.failed_will_retry,
            "emails_failed": emails.failed_for_good,
            "emails_without_address": emails.no_address,
        },
    )


@dg.job(executor_def=dg.in_process_executor)
def deliver_documents_job() -> None:
    """Shares due documents (launched by the `deliver_due_documents` sensor)."""
    share_due_documents()
