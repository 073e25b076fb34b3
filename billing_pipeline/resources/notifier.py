"""Notifier: shares a due document with its recipient, in the client portal and by email.

The portal share is a row in the client portal table. The email (SMTP) says only that the
practice shared a document and links to the portal: never the document, a name, a date of
birth, a diagnosis or an amount (domain/notifications.py).
"""

from __future__ import annotations

import smtplib
import ssl
from dataclasses import replace
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.utils import formataddr, formatdate

import dagster as dg
from pydantic import Field
from sqlalchemy import Connection

from billing_pipeline.config import SmtpSettings, smtp_settings
from billing_pipeline.db.deliveries import DueDelivery, record_share
from billing_pipeline.domain.delivery import DEFAULT_OUTCOME_WAIT
from billing_pipeline.domain.notifications import DEFAULT_MAX_EMAIL_ATTEMPTS, Notification
from billing_pipeline.errors import SafeMessageError


class EmailNotSent(SafeMessageError):
    """The SMTP server could not be reached or refused the message (server and error type
    only: never the address or the content)."""


class Notifier(dg.ConfigurableResource):
    """Shares documents in the client portal and tells the recipient by email (SMTP).

    SMTP comes from BILLING_SMTP_* in the environment, read when an email is sent; the fields
    below override the host and port (tests, the demo's local sink)."""

    portal_base_url: str = "https://portal.example.invalid"
    outcome_wait_minutes: int = Field(
        default=int(DEFAULT_OUTCOME_WAIT.total_seconds() // 60),
        ge=0,
        description="How long a bill due for sharing waits for an AutoPay attempt in flight on "
        "it to settle before it goes out as it stands (it is shared again once paid).",
    )
    smtp_host: str | None = Field(
        default=None, description="Overrides BILLING_SMTP_HOST (empty: send no email)."
    )
    smtp_port: int | None = Field(default=None, description="Overrides BILLING_SMTP_PORT.")
    max_email_attempts: int = Field(
        default=DEFAULT_MAX_EMAIL_ATTEMPTS,
        ge=1,
        description="Failed sends of one email before it is marked failed for staff.",
    )
    first_retry_seconds: float = Field(
        default=60.0,
        ge=0,
        description="Wait after an email's first failed send; doubles, at most an hour.",
    )

    def outcome_wait(self) -> timedelta:
        return timedelta(minutes=self.outcome_wait_minutes)

    def first_retry(self) -> timedelta:
        return timedelta(seconds=self.first_retry_seconds)

    def share(
        self,
        conn: Connection,
        delivery: DueDelivery,
        shared_at: datetime,
        *,
        revision: int = 0,
        bill_status: str | None = None,
    ) -> None:
        """Record the share once per revision (a re-run finds it there): revision 0 is the
        first share, 1 the bill shared again once AutoPay paid it. The first share queues the
        delivery's one email."""
        record_share(conn, delivery, shared_at, revision=revision, bill_status=bill_status)

    def portal_link(self, delivery: DueDelivery) -> str:
        return self.portal_link_for(delivery.document_type, delivery.document_id)

    def portal_link_for(self, document_type: str, document_id: int) -> str:
        return f"{self.portal_base_url}/documents/{document_type}/{document_id}"

    def smtp(self) -> SmtpSettings:
        settings = smtp_settings()
        if self.smtp_host is not None:
            settings = replace(settings, host=self.smtp_host)
        if self.smtp_port is not None:
            settings = replace(settings, port=self.smtp_port)
        return settings

    def email_configured(self) -> bool:
        return bool(self.smtp().host)

    def send(
        self, to_address: str, practice_name: str, message: Notification, message_id: str
    ) -> None:
        """Hand one message to the SMTP server; EmailNotSent when it cannot be (the server and
        the error's type only). The Message-ID is the delivery's own, so a copy that a crash
        made us send again can be recognised as the same message."""
        settings = self.smtp()
        email = EmailMessage()
        email["From"] = formataddr((" ".join(practice_name.split()), settings.sender))
        email["To"] = to_address
        email["Subject"] = message.subject
        email["Date"] = formatdate(localtime=False)
        email["Message-ID"] = message_id
        email.set_content(message.body)
        try:
            if settings.tls == "ssl":
                client: smtplib.SMTP = smtplib.SMTP_SSL(
                    settings.host,
                    settings.port,
                    timeout=settings.timeout_seconds,
                    context=ssl.create_default_context(),
                )
            else:
                client = smtplib.SMTP(
                    settings.host, settings.port, timeout=settings.timeout_seconds
                )
            with client:
                if settings.tls == "starttls":
                    client.starttls(context=ssl.create_default_context())
                if settings.user:
                    client.login(settings.user, settings.password)
                client.send_message(email)
        except (smtplib.SMTPException, OSError) as exc:
            code = getattr(exc, "smtp_code", None)
            detail = f"{type(exc).__name__}" + (f" {code}" if code else "")
            raise EmailNotSent(f"SMTP {settings.describe()}: {detail}") from None
