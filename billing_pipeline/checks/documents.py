"""Checks on the documents people receive: superbills an insurer would refuse, and
notification emails that could not be sent. Both WARN: the documents are made and shared
anyway; staff must complete the practice's or client's data, or fix the mail server."""

from __future__ import annotations

import dagster as dg

from billing_pipeline.assets.billing import superbills
from billing_pipeline.assets.delivery import delivery_queue
from billing_pipeline.db.documents import incomplete_superbills
from billing_pipeline.db.emails import email_problems
from billing_pipeline.resources.database import BillingDatabase

SHOWN = 100


@dg.asset_check(asset=superbills, blocking=False)
def superbills_have_required_fields(db: BillingDatabase) -> dg.AssetCheckResult:
    """Every superbill has what an insurer needs to reimburse out-of-network care: the
    practice's NPI and tax id, the rendering provider's NPI, the client's date of birth and
    at least one diagnosis. One that lacks any is still made, marked incomplete on the page."""
    with db.engine.connect() as conn:
        incomplete = incomplete_superbills(conn)
    return dg.AssetCheckResult(
        passed=not incomplete,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "incomplete_superbills": dg.MetadataValue.json(
                [
                    {
                        "superbill_id": f"superbill-{s.superbill_id}",
                        "client_id": s.client_id,
                        "month": s.month,
                        "missing": list(s.missing),
                    }
                    for s in incomplete[:SHOWN]
                ]
            ),
            "incomplete": dg.MetadataValue.int(len(incomplete)),
        },
    )


@dg.asset_check(asset=delivery_queue, blocking=False)
def notification_emails_sent(db: BillingDatabase) -> dg.AssetCheckResult:
    """No shared document's notification email has failed for good (after the notifier's
    retries) or lacks a recipient address."""
    with db.engine.connect() as conn:
        problems = email_problems(conn)
    return dg.AssetCheckResult(
        passed=not problems,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "emails_not_sent": dg.MetadataValue.json(
                [
                    {
                        "delivery_id": p.delivery_id,
                        "client_id": p.client_id,
                        "status": p.status,
                        "attempts": p.attempts,
                        "last_error": p.last_error,
                    }
                    for p in problems[:SHOWN]
                ]
            ),
            "not_sent": dg.MetadataValue.int(len(problems)),
        },
    )


DOCUMENT_CHECKS = [superbills_have_required_fields, notification_emails_sent]
