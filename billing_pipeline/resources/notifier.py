"""Notifier: shares a due document with its recipient.

The portal notifier records the share in the client portal table; the SMTP notifier of a
later issue also sends an email with a portal link (never the document, never PHI).
"""

from __future__ import annotations

from datetime import datetime, timedelta

import dagster as dg
from pydantic import Field
from sqlalchemy import Connection

from billing_pipeline.db.deliveries import DueDelivery, record_share
from billing_pipeline.domain.delivery import DEFAULT_OUTCOME_WAIT


class Notifier(dg.ConfigurableResource):
    """Shares documents in the client portal."""

    portal_base_url: str = "https://portal.example.invalid"
    outcome_wait_minutes: int = Field(
        default=int(DEFAULT_OUTCOME_WAIT.total_seconds() // 60),
        ge=0,
        description="How long a bill due for sharing waits for an AutoPay attempt in flight on "
        "it to settle before it goes out as it stands (it is shared again once paid).",
    )

    def outcome_wait(self) -> timedelta:
        return timedelta(minutes=self.outcome_wait_minutes)

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
        first share, 1 the bill shared again once AutoPay paid it."""
        record_share(conn, delivery, shared_at, revision=revision, bill_status=bill_status)

    def portal_link(self, delivery: DueDelivery) -> str:
        return f"{self.portal_base_url}/documents/{delivery.document_type}/{delivery.document_id}"
