"""The notification emails of shared documents: claimed one at a time, so that two delivery
runs (two sensor ticks, a re-run, two workers) never send one twice.

The claim is a row lock held while the message is handed to SMTP and until its outcome is
written: `SELECT ... FOR UPDATE SKIP LOCKED` on PostgreSQL (another run skips the row and
takes the next), and on SQLite the database's write lock that every transaction takes first
(`BEGIN IMMEDIATE`, db/engine.py), so a second run waits and then finds the email sent. A
process that dies while sending releases the lock with its connection: the email is still
pending and the next run sends it (the only window where one could go twice is a crash between
the SMTP server's "250 OK" and our commit; the Message-ID is the delivery's own, so the copy
is recognisable).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, and_, func, or_, select, update

from billing_pipeline.db import models as m


@dataclass(frozen=True)
class EmailJob:
    delivery_id: int
    account_id: str
    practice_name: str
    client_id: str
    document_type: str
    document_id: int
    recipient: str
    recipient_id: str
    attempts: int


def claim_due_email(conn: Connection, now: datetime) -> EmailJob | None:
    """Lock the oldest pending email whose retry time has come, or None. The lock lasts until
    the transaction ends: write the outcome in the same transaction."""
    row = conn.execute(
        select(
            m.Delivery.id,
            m.Delivery.account_id,
            m.Delivery.client_id,
            m.Delivery.document_type,
            m.Delivery.document_id,
            m.Delivery.recipient,
            m.Delivery.recipient_id,
            m.Delivery.email_attempts,
        )
        .where(
            and_(
                m.Delivery.email_status == "pending",
                or_(
                    m.Delivery.email_next_attempt_at.is_(None),
                    m.Delivery.email_next_attempt_at <= now,
                ),
            )
        )
        .order_by(m.Delivery.id)
        .limit(1)
        .with_for_update(skip_locked=True)
    ).first()
    if row is None:
        return None
    name = conn.execute(select(m.Account.name).where(m.Account.id == row.account_id)).scalar_one()
    return EmailJob(
        delivery_id=row.id,
        account_id=row.account_id,
        practice_name=name,
        client_id=row.client_id,
        document_type=row.document_type,
        document_id=row.document_id,
        recipient=row.recipient,
        recipient_id=row.recipient_id,
        attempts=row.email_attempts,
    )


def recipient_address(conn: Connection, job: EmailJob) -> str | None:
    """The billing contact's email when the delivery goes to them, else the client's."""
    table = m.BillingContact if job.recipient == "billing_contact" else m.Client
    address = conn.execute(select(table.email).where(table.id == job.recipient_id)).scalar()
    return address.strip() if address and address.strip() else None


def mark_email_sent(conn: Connection, delivery_id: int, at: datetime) -> None:
    conn.execute(
        update(m.Delivery)
        .where(and_(m.Delivery.id == delivery_id, m.Delivery.email_status == "pending"))
        .values(
            email_status="sent",
            email_sent_at=at,
            email_attempts=m.Delivery.email_attempts + 1,
            email_last_error=None,
        )
    )


def mark_email_failed(
    conn: Connection, delivery_id: int, error: str, retry_at: datetime | None
) -> None:
    """One more failed attempt: pending again from `retry_at`, or `failed` for staff when
    `retry_at` is None (the notifier's limit is reached)."""
    conn.execute(
        update(m.Delivery)
        .where(and_(m.Delivery.id == delivery_id, m.Delivery.email_status == "pending"))
        .values(
            email_status="pending" if retry_at is not None else "failed",
            email_attempts=m.Delivery.email_attempts + 1,
            email_next_attempt_at=retry_at,
            email_last_error=error[:200],
        )
    )


def mark_no_address(conn: Connection, delivery_id: int) -> None:
    conn.execute(
        update(m.Delivery)
        .where(and_(m.Delivery.id == delivery_id, m.Delivery.email_status == "pending"))
        .values(email_status="no_address")
    )


@dataclass(frozen=True)
class EmailProblem:
    delivery_id: int
    client_id: str
    status: str
    attempts: int
    last_error: str | None


def email_problems(conn: Connection) -> list[EmailProblem]:
    """Emails that failed for good, or could not be sent for want of an address."""
    return [
        EmailProblem(r.id, r.client_id, r.email_status, r.email_attempts, r.email_last_error)
        for r in conn.execute(
            select(
                m.Delivery.id,
                m.Delivery.client_id,
                m.Delivery.email_status,
                m.Delivery.email_attempts,
                m.Delivery.email_last_error,
            )
            .where(m.Delivery.email_status.in_(("failed", "no_address")))
            .order_by(m.Delivery.id)
        )
    ]


def pending_email_count(conn: Connection) -> int:
    return int(
        conn.execute(
            select(func.count()).select_from(m.Delivery).where(m.Delivery.email_status == "pending")
        ).scalar_one()
    )
