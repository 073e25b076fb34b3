"""Deliveries that fall due, and marking them shared (once)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    Exists,
    Row,
    ScalarSelect,
    and_,
    func,
    insert,
    or_,
    select,
    update,
)

from billing_pipeline.db import models as m
from billing_pipeline.domain.autopay import Outcome
from billing_pipeline.domain.delivery import (
    DEFAULT_OUTCOME_WAIT,
    bill_status_at,
    outcome_wait_over,
)
from billing_pipeline.domain.schedule import Step


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


def _due(r: Row[Any]) -> DueDelivery:
    return DueDelivery(
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


def _pending_claim_of_bill() -> ScalarSelect[datetime]:
    """When the newest attempt still in flight on the delivery's bill was claimed (NULL when
    none is): a bill is not shared before its AutoPay outcome is known."""
    return (
        select(func.max(m.AutopayAttempt.claimed_at))
        .join(m.AutopayAttemptBill, m.AutopayAttemptBill.attempt_id == m.AutopayAttempt.id)
        .where(
            and_(
                m.Delivery.document_type == "bill",
                m.AutopayAttemptBill.bill_id == m.Delivery.document_id,
                m.AutopayAttempt.status == Outcome.PENDING.value,
            )
        )
        .scalar_subquery()
    )


def _autopay_done() -> Exists:
    return (
        select(m.NightStep.night)
        .where(
            and_(
                m.NightStep.account_id == m.Delivery.account_id,
                m.NightStep.night == m.Delivery.night,
                m.NightStep.step == Step.AUTOPAY.value,
            )
        )
        .exists()
    )


def due_deliveries(
    conn: Connection,
    now_for: Callable[[str], datetime],
    limit: int | None = None,
    outcome_wait: timedelta = DEFAULT_OUTCOME_WAIT,
) -> list[DueDelivery]:
    """Undelivered deliveries whose time has come in their practice's clock, oldest first.

    A bill due after its night's AutoPay waits until that AutoPay ran for the practice, and
    then while an attempt on it is in flight or unsettled, so that it is never shared as open
    when it was paid. Past `outcome_wait` (real time, from its due time or the attempt's claim,
    whichever is later) it goes out as it stands, and is shared again if the attempt pays it."""
    claimed = _pending_claim_of_bill().label("pending_claimed_at")
    rows = conn.execute(
        select(m.Delivery.__table__, m.Account.timezone, claimed)
        .join(m.Account, m.Account.id == m.Delivery.account_id)
        .where(
            and_(
                m.Delivery.delivered_at.is_(None),
                or_(m.Delivery.wait_for_autopay.is_(False), _autopay_done()),
            )
        )
        .order_by(m.Delivery.scheduled_at, m.Delivery.id)
    )
    now_cache: dict[str, datetime] = {}
    real_now = datetime.now(UTC)
    due = []
    for r in rows:
        now = now_cache.setdefault(r.timezone, now_for(r.timezone))
        if r.scheduled_at > now:
            continue
        if not outcome_wait_over(r.pending_claimed_at, r.scheduled_at, real_now, outcome_wait):
            continue
        due.append(_due(r))
        if limit is not None and len(due) >= limit:
            break
    return due


def mark_delivered(
    conn: Connection,
    delivery: DueDelivery,
    delivered_at: datetime,
    outcome_wait: timedelta = DEFAULT_OUTCOME_WAIT,
) -> bool:
    """Record the delivery as made, with the bill's status at that instant; False when another
    run delivered it first (the document is never shared twice), or when an AutoPay attempt
    on the bill is in flight again and has not waited out `outcome_wait`."""
    status = None
    before_outcome = False
    if delivery.document_type == "bill":
        paid_at = conn.execute(
            select(m.Bill.paid_at).where(m.Bill.id == delivery.document_id)
        ).scalar_one()
        status = bill_status_at(paid_at, delivered_at)
        pending_claimed = conn.execute(
            select(_pending_claim_of_bill()).where(m.Delivery.id == delivery.id)
        ).scalar_one_or_none()
        if not outcome_wait_over(
            pending_claimed, delivery.scheduled_at, datetime.now(UTC), outcome_wait
        ):
            return False
        before_outcome = pending_claimed is not None
    changed = conn.execute(
        update(m.Delivery)
        .where(and_(m.Delivery.id == delivery.id, m.Delivery.delivered_at.is_(None)))
        .values(
            delivered_at=delivered_at,
            bill_status_at_delivery=status,
            shared_before_outcome=before_outcome,
        )
    ).rowcount
    return bool(changed)


@dataclass(frozen=True)
class Reshare:
    delivery: DueDelivery
    bill_status: str


def due_reshares(conn: Connection, limit: int | None = None) -> list[Reshare]:
    """Bills shared before their AutoPay outcome was known whose attempt has since paid them:
    each is shared again, once."""
    query = (
        select(m.Delivery.__table__, m.Account.timezone, m.Bill.status.label("bill_status"))
        .join(m.Account, m.Account.id == m.Delivery.account_id)
        .join(m.Bill, m.Bill.id == m.Delivery.document_id)
        .where(
            and_(
                m.Delivery.document_type == "bill",
                m.Delivery.reshare_due_at.is_not(None),
                m.Delivery.reshared_at.is_(None),
            )
        )
        .order_by(m.Delivery.reshare_due_at, m.Delivery.id)
    )
    if limit is not None:
        query = query.limit(limit)
    return [Reshare(_due(r), r.bill_status) for r in conn.execute(query)]


def mark_reshared(conn: Connection, delivery_id: int, at: datetime) -> bool:
    return bool(
        conn.execute(
            update(m.Delivery)
            .where(and_(m.Delivery.id == delivery_id, m.Delivery.reshared_at.is_(None)))
            .values(reshared_at=at)
        ).rowcount
    )


def record_share(
    conn: Connection,
    delivery: DueDelivery,
    shared_at: datetime,
    *,
    revision: int = 0,
    bill_status: str | None = None,
) -> None:
    """The portal share of a delivery, once per revision (a re-run finds it there)."""
    exists = conn.execute(
        select(m.PortalShare.id).where(
            and_(m.PortalShare.delivery_id == delivery.id, m.PortalShare.revision == revision)
        )
    ).first()
    if exists is None:
        conn.execute(
            insert(m.PortalShare).values(
                delivery_id=delivery.id,
                revision=revision,
                client_id=delivery.client_id,
                recipient=delivery.recipient,
                recipient_id=delivery.recipient_id,
                document_type=delivery.document_type,
                document_id=delivery.document_id,
                bill_status=bill_status,
                shared_at=shared_at,
            )
        )
    if revision == 0:
        # The delivery's one notification email, sent by db/emails.py's claim (never twice).
        conn.execute(
            update(m.Delivery)
            .where(and_(m.Delivery.id == delivery.id, m.Delivery.email_status.is_(None)))
            .values(email_status="pending")
        )
