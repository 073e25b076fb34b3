"""Notifier: shares a due document with its recipient.

The portal notifier records the share in the client portal table; the SMTP notifier of a
later issue also sends an email with a portal link (never the document, never PHI).
"""

from __future__ import annotations

from datetime import datetime

import dagster as dg
from sqlalchemy import Connection, insert, select

from billing_pipeline.db import models as m
from billing_pipeline.db.deliveries import DueDelivery


class Notifier(dg.ConfigurableResource):
    """Shares documents in the client portal."""

    portal_base_url: str = "https://portal.example.invalid"

    def share(self, conn: Connection, delivery: DueDelivery, shared_at: datetime) -> None:
        """Record the share once (a re-run finds it there)."""
        exists = conn.execute(
            select(m.PortalShare.id).where(m.PortalShare.delivery_id == delivery.id)
        ).first()
        if exists is None:
            conn.execute(
                insert(m.PortalShare.__table__).values(
                    delivery_id=delivery.id,
                    client_id=delivery.client_id,
                    recipient=delivery.recipient,
                    recipient_id=delivery.recipient_id,
                    document_type=delivery.document_type,
                    document_id=delivery.document_id,
                    shared_at=shared_at,
                )
            )

    def portal_link(self, delivery: DueDelivery) -> str:
        return f"{self.portal_base_url}/documents/{delivery.document_type}/{delivery.document_id}"
