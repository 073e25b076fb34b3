"""Send each shared document's notification email once.

Each email is claimed (a row lock, db/emails.py), handed to SMTP and its outcome written in
one transaction. A failure leaves it pending with the error (server and error type only) and
a later run tries again after a growing delay (real time); after the notifier's limit it is
marked failed and shown to staff by the `notification_emails_sent` check.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from billing_pipeline.db import emails as q
from billing_pipeline.domain.notifications import gives_up, notification, retry_delay
from billing_pipeline.resources.database import BillingDatabase
from billing_pipeline.resources.notifier import EmailNotSent, Notifier


@dataclass
class EmailFigures:
    sent: int = 0
    failed_will_retry: int = 0
    failed_for_good: int = 0
    no_address: int = 0
    smtp_not_configured: bool = False


def message_id(delivery_id: int, database: str) -> str:
    """The delivery's own Message-ID (the same on every attempt)."""
    return f"<delivery-{delivery_id}.{database}@billing-pipeline.invalid>"


def send_due_emails(db: BillingDatabase, notifier: Notifier, limit: int = 5000) -> EmailFigures:
    """Send the pending emails whose time has come, each once, until none is left (or `limit`).
    With no SMTP host configured nothing is sent and every email stays pending."""
    figures = EmailFigures()
    if not notifier.email_configured():
        figures.smtp_not_configured = True
        return figures
    database = db.fingerprint()
    for _ in range(limit):
        # Not db.transact(): its retry on a conflict would run the send a second time.
        with db.engine.begin() as conn:
            now = datetime.now(UTC)
            job = q.claim_due_email(conn, now)
            if job is None:
                break
            address = q.recipient_address(conn, job)
            if address is None:
                q.mark_no_address(conn, job.delivery_id)
                figures.no_address += 1
                continue
            link = notifier.portal_link_for(job.document_type, job.document_id)
            message = notification(job.practice_name, job.document_type, link)
            try:
                notifier.send(
                    address, job.practice_name, message, message_id(job.delivery_id, database)
                )
            except EmailNotSent as exc:
                failures = job.attempts + 1
                if gives_up(failures, notifier.max_email_attempts):
                    q.mark_email_failed(conn, job.delivery_id, str(exc), None)
                    figures.failed_for_good += 1
                else:
                    q.mark_email_failed(
                        conn,
                        job.delivery_id,
                        str(exc),
                        now + retry_delay(failures, notifier.first_retry()),
                    )
                    figures.failed_will_retry += 1
                # One outage fails every send: leave the rest for the next run.
                break
            q.mark_email_sent(conn, job.delivery_id, datetime.now(UTC))
            figures.sent += 1
    return figures
