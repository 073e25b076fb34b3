"""The rows that tell one bill's story (`billing-pipeline trail BILL_ID`): its lines, the
night steps that made and charged it, the AutoPay attempts that covered it with their payments,
and its delivery with each portal share and the notification email. Ids, amounts and instants
only: no name, email, birth date or diagnosis is read here."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

from sqlalchemy import Connection, select

from billing_pipeline.db import models as m
from billing_pipeline.db.owners import run_id_of


@dataclass(frozen=True)
class TrailLine:
    session_id: str
    session_starts_at: datetime
    cpt: str
    units: int
    fee_cents: int
    modifiers: str
    amount_cents: int


@dataclass(frozen=True)
class TrailStep:
    step: str
    completed_at: datetime
    run_id: str | None


@dataclass(frozen=True)
class TrailAttempt:
    id: int
    night: date
    payer: str
    payer_id: str
    amount_cents: int
    status: str
    failure_code: str | None
    payment_intent_id: str | None
    attempted_at: datetime
    completed_at: datetime | None
    run_id: str | None
    paid_cents: int | None  # the payment row this attempt made, if any
    paid_at: datetime | None


@dataclass(frozen=True)
class TrailShare:
    revision: int
    shared_at: datetime
    bill_status: str | None


@dataclass(frozen=True)
class TrailDelivery:
    id: int
    recipient: str
    recipient_id: str
    scheduled_at: datetime
    wait_for_autopay: bool
    delivered_at: datetime | None
    bill_status_at_delivery: str | None
    shares: tuple[TrailShare, ...]
    email_status: str | None
    email_attempts: int
    email_sent_at: datetime | None


@dataclass(frozen=True)
class BillFacts:
    id: int
    account_id: str
    client_id: str
    night: date
    created_at: datetime
    amount_cents: int
    status: str
    paid_at: datetime | None
    timezone: str
    lines: tuple[TrailLine, ...]
    session_ids: tuple[str, ...]
    steps: tuple[TrailStep, ...]
    attempts: tuple[TrailAttempt, ...]
    deliveries: tuple[TrailDelivery, ...]


def bill_facts(conn: Connection, bill_id: int) -> BillFacts | None:
    """Everything recorded about bill `bill_id`, in time order; None if there is no such bill."""
    bill = conn.execute(select(m.Bill.__table__).where(m.Bill.id == bill_id)).first()
    if bill is None:
        return None
    timezone = conn.execute(
        select(m.Account.timezone).where(m.Account.id == bill.account_id)
    ).scalar_one()
    lines = tuple(
        TrailLine(
            r.session_id, r.starts_at, r.cpt, r.units, r.fee_cents, r.modifiers, r.amount_cents
        )
        for r in conn.execute(
            select(
                m.BillLineRow.session_id,
                m.SessionRow.starts_at,
                m.BillLineRow.cpt,
                m.BillLineRow.units,
                m.BillLineRow.fee_cents,
                m.BillLineRow.modifiers,
                m.BillLineRow.amount_cents,
            )
            .join(m.SessionRow, m.SessionRow.id == m.BillLineRow.session_id)
            .where(m.BillLineRow.bill_id == bill_id)
            .order_by(m.SessionRow.starts_at, m.BillLineRow.id)
        )
    )
    session_ids = tuple(
        sorted(
            conn.execute(
                select(m.BillSession.session_id).where(m.BillSession.bill_id == bill_id)
            ).scalars()
        )
    )
    a, p = m.AutopayAttempt, m.Payment
    attempt_rows = conn.execute(
        select(
            a.id,
            a.night,
            a.payer,
            a.payer_id,
            a.amount_cents,
            a.status,
            a.failure_code,
            a.stripe_payment_intent_id,
            a.attempted_at,
            a.completed_at,
            a.owner,
            p.amount_cents.label("paid_cents"),
            p.paid_at,
        )
        .join(m.AutopayAttemptBill, m.AutopayAttemptBill.attempt_id == a.id)
        .outerjoin(p, p.attempt_id == a.id)
        .where(m.AutopayAttemptBill.bill_id == bill_id)
        .order_by(a.attempted_at, a.id)
    ).all()
    attempts = tuple(
        TrailAttempt(
            r.id,
            r.night,
            r.payer,
            r.payer_id,
            r.amount_cents,
            r.status,
            r.failure_code,
            r.stripe_payment_intent_id,
            r.attempted_at,
            r.completed_at,
            run_id_of(r.owner) if r.owner else None,
            r.paid_cents,
            r.paid_at,
        )
        for r in attempt_rows
    )
    # The steps that made the bill (its night's 00:00 step) and charged it (each night whose
    # AutoPay attempted it).
    nights = {(bill.night, "bills")} | {(t.night, "autopay") for t in attempts}
    steps = tuple(
        sorted(
            (
                TrailStep(r.step, r.completed_at, r.run_id)
                for r in conn.execute(
                    select(m.NightStep.__table__).where(
                        m.NightStep.account_id == bill.account_id,
                        m.NightStep.night.in_({night for night, _ in nights}),
                    )
                )
                if (r.night, r.step) in nights
            ),
            key=lambda s: s.completed_at,
        )
    )
    deliveries = []
    for d in conn.execute(
        select(m.Delivery.__table__).where(
            m.Delivery.document_type == "bill", m.Delivery.document_id == bill_id
        )
    ):
        shares = tuple(
            TrailShare(s.revision, s.shared_at, s.bill_status)
            for s in conn.execute(
                select(m.PortalShare.__table__)
                .where(m.PortalShare.delivery_id == d.id)
                .order_by(m.PortalShare.revision)
            )
        )
        deliveries.append(
            TrailDelivery(
                d.id,
                d.recipient,
                d.recipient_id,
                d.scheduled_at,
                d.wait_for_autopay,
                d.delivered_at,
                d.bill_status_at_delivery,
                shares,
                d.email_status,
                d.email_attempts,
                d.email_sent_at,
            )
        )
    return BillFacts(
        id=bill.id,
        account_id=bill.account_id,
        client_id=bill.client_id,
        night=bill.night,
        created_at=bill.created_at,
        amount_cents=bill.amount_cents,
        status=bill.status,
        paid_at=bill.paid_at,
        timezone=timezone,
        lines=lines,
        session_ids=session_ids,
        steps=steps,
        attempts=attempts,
        deliveries=tuple(deliveries),
    )
