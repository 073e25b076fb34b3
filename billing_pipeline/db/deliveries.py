"""Deliveries that fall due, and marking them shared (once)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, and_, select, update

from billing_pipeline.db import models as m
from billing_pipeline.domain.delivery import bill_status_at


@dataclass(frozen=True)
class DueDelivery:
    id: int
    account_id: str
    timezone: str
    client_id: str
    document_type: str
    document_id: int
    recipient: str
    recipient_id: str
    scheduled_at: datetime


def due_deliveries(
    conn: Connection, now_for: Callable[[str], datetime], limit: int | None = None
) -> list[DueDelivery]:
    """Undelivered deliveries whose time has come in their practice's clock, not waiting for
    AutoPay, oldest first."""
    rows = conn.execute(
        select(m.Delivery.__table__, m.Account.timezone)
        .join(m.Account, m.Account.id == m.Delivery.account_id)
        .where(and_(m.Delivery.delivered_at.is_(None), m.Delivery.wait_for_autopay.is_(False)))
        .order_by(m.Delivery.scheduled_at, m.Delivery.id)
    )
    now_cache: dict[str, datetime] = {}
    due = []
    for r in rows:
        now = now_cache.setdefault(r.timezone, now_for(r.timezone))
        if r.scheduled_at <= now:
            due.append(
                DueDelivery(
                    r.id,
                    r.account_id,
                    r.timezone,
                    r.client_id,
                    r.document_type,
                    r.document_id,
                    r.recipient,
                    r.recipient_id,
                    r.scheduled_at,
                )
            )
            if limit is not None and len(due) >= limit:
                break
    return due


def mark_delivered(conn: Connection, delivery: DueDelivery, delivered_at: datetime) -> bool:
    """Record the delivery as made, with the bill's status at that instant; False when another
    run delivered it first (the document is never shared twice)."""
    status = None
    if delivery.document_type == "bill":
        paid_at = conn.execute(
            select(m.Bill.paid_at).where(m.Bill.id == delivery.document_id)
        ).scalar_one()
        status = bill_status_at(paid_at, delivered_at)
    changed = conn.execute(
        update(m.Delivery.__table__)
        .where(and_(m.Delivery.id == delivery.id, m.Delivery.delivered_at.is_(None)))
        .values(delivered_at=delivered_at, bill_status_at_delivery=status)
    ).rowcount
    return bool(changed)
