"""The evening summary: where a practice has a staff address, the preview of its coming night
(services/preview.py: counts and amounts by client id, never a name) goes out by email at the
practice's local hour, once per night, so staff can fix a setting before midnight.

`send_due_summaries` is meant to be called every few minutes (`billing-pipeline summary
send-due` from cron, or a schedule): a summary is claimed before it is sent and marked sent
after; a failed send gives the claim back for the next call. A crash between the server's
"250 OK" and our commit leaves the claim, so that summary is not sent twice (and not retried)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError

from billing_pipeline.db import summary as q
from billing_pipeline.domain.notifications import Notification
from billing_pipeline.domain.summary import evening_night
from billing_pipeline.resources.notifier import EmailNotSent, Notifier
from billing_pipeline.services.preview import build_preview, render_preview


@dataclass
class SummaryFigures:
    sent: int = 0
    failed: int = 0
    not_due: int = 0
    already: int = 0
    smtp_not_configured: bool = False


def summary_message(practice_name: str, preview_text: str, night: str) -> Notification:
    practice = " ".join(practice_name.split())
    return Notification(
        subject=f"{practice}: what tonight's billing will do (night of {night})",
        body=(
            f"Hello,\n\nThis is what the billing automation will do tonight for {practice}. "
            "Clients are named by their id only. If something looks wrong, fix the setting "
            "before midnight.\n\n" + preview_text + "\n"
        ),
    )


def send_due_summaries(
    engine: Engine, notifier: Notifier, now: datetime, database: str
) -> SummaryFigures:
    """Send each practice's summary whose local hour has come and that was not sent tonight."""
    figures = SummaryFigures()
    if not notifier.email_configured():
        figures.smtp_not_configured = True
        return figures
    with engine.connect() as conn:
        contacts = q.staff_contacts(conn)
    for staff in contacts:
        night = evening_night(now, staff.timezone, staff.summary_hour)
        if night is None:
            figures.not_due += 1
            continue
        with engine.connect() as conn:
            if q.summary_made(conn, staff.account_id, night):
                figures.already += 1
                continue
        preview = build_preview(engine, staff.account_id, night, now)
        message_id = f"<summary-{staff.account_id}-{night}.{database}@billing-pipeline.invalid>"
        try:
            with engine.begin() as conn:
                claimed = q.claim_summary(conn, staff.account_id, night, now, message_id)
        except IntegrityError:  # another caller claimed it at the same moment
            claimed = False
        if not claimed:
            figures.already += 1
            continue
        message = summary_message(staff.practice_name, render_preview(preview), str(night))
        try:
            notifier.send(staff.staff_email, staff.practice_name, message, message_id)
        except EmailNotSent:
            with engine.begin() as conn:
                q.drop_claim(conn, staff.account_id, night)
            figures.failed += 1
            continue
        with engine.begin() as conn:
            q.mark_summary_sent(conn, staff.account_id, night, now)
        figures.sent += 1
    return figures
