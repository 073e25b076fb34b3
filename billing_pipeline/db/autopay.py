"""AutoPay's records: claim an attempt before Stripe is called, record its outcome after.

The claim is structural: the attempt row carries the deterministic idempotency key (unique),
and a partial unique index allows one `pending` attempt per client. Two runs of the same
night, or a backfill beside the schedule, cannot both charge a client: one insert wins, the
other finds the key or the pending attempt and stands back.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime

from sqlalchemy import Connection, and_, insert, select, update
from sqlalchemy.exc import IntegrityError

from billing_pipeline.db import models as m
from billing_pipeline.domain.autopay import Outcome, PastAttempt


@dataclass(frozen=True)
class OpenBill:
    id: int
    amount_cents: int


@dataclass(frozen=True)
class ClaimedAttempt:
    id: int
    client_id: str
    idempotency_key: str
    amount_cents: int
    stripe_customer_id: str
    stripe_payment_method_id: str
    bill_ids: tuple[int, ...]


def open_bills(conn: Connection, client_id: str, created_up_to: datetime) -> list[OpenBill]:
    """The client's open bills made at or before the attempt."""
    rows = conn.execute(
        select(m.Bill.id, m.Bill.amount_cents)
        .where(
            and_(
                m.Bill.client_id == client_id,
                m.Bill.status == "open",
                m.Bill.created_at <= created_up_to,
            )
        )
        .order_by(m.Bill.id)
    )
    return [OpenBill(r.id, r.amount_cents) for r in rows]


def clients_with_open_bills(
    conn: Connection, account_id: str, created_up_to: datetime
) -> list[str]:
    return list(
        conn.execute(
            select(m.Bill.client_id)
            .where(
                and_(
                    m.Bill.account_id == account_id,
                    m.Bill.status == "open",
                    m.Bill.amount_cents > 0,
                    m.Bill.created_at <= created_up_to,
                )
            )
            .group_by(m.Bill.client_id)
            .order_by(m.Bill.client_id)
        ).scalars()
    )


def attempt_history(conn: Connection, client_id: str) -> list[PastAttempt]:
    rows = conn.execute(
        select(m.AutopayAttempt.night, m.AutopayAttempt.payment_method_id, m.AutopayAttempt.status)
        .where(m.AutopayAttempt.client_id == client_id)
        .order_by(m.AutopayAttempt.night, m.AutopayAttempt.id)
    )
    return [PastAttempt(r.night, r.payment_method_id, Outcome(r.status)) for r in rows]


def attempt_exists(conn: Connection, key: str) -> bool:
    return (
        conn.execute(
            select(m.AutopayAttempt.id).where(m.AutopayAttempt.idempotency_key == key)
        ).first()
        is not None
    )


def claim_attempt(
    conn: Connection,
    *,
    key: str,
    account_id: str,
    client_id: str,
    night: date,
    payer: str,
    payer_id: str,
    payment_method_id: str,
    bills: list[OpenBill],
    attempted_at: datetime,
) -> ClaimedAttempt | None:
    """Insert the pending attempt and the bills it covers; None when another run holds the
    key or an attempt in flight for this client. The caller commits before calling Stripe."""
    amount = sum(b.amount_cents for b in bills)
    try:
        with conn.begin_nested():
            attempt_id = conn.execute(
                insert(m.AutopayAttempt.__table__)
                .values(
                    idempotency_key=key,
                    account_id=account_id,
                    client_id=client_id,
                    night=night,
                    payer=payer,
                    payer_id=payer_id,
                    payment_method_id=payment_method_id,
                    amount_cents=amount,
                    status=Outcome.PENDING.value,
                    attempted_at=attempted_at,
                    claimed_at=datetime.now(UTC),
                )
                .returning(m.AutopayAttempt.id)
            ).scalar_one()
            conn.execute(
                insert(m.AutopayAttemptBill.__table__),
                [{"attempt_id": attempt_id, "bill_id": b.id} for b in bills],
            )
    except IntegrityError:
        return None
    pm = conn.execute(
        select(m.PaymentMethod.stripe_customer_id, m.PaymentMethod.stripe_payment_method_id).where(
            m.PaymentMethod.id == payment_method_id
        )
    ).one()
    return ClaimedAttempt(
        attempt_id,
        client_id,
        key,
        amount,
        pm.stripe_customer_id,
        pm.stripe_payment_method_id,
        tuple(b.id for b in bills),
    )


def record_outcome(
    conn: Connection,
    attempt_id: int,
    outcome: Outcome,
    *,
    payment_intent_id: str | None,
    failure_code: str | None,
    at: datetime,
) -> bool:
    """Write a known outcome of a pending attempt; on success, the payment and the paid bills
    in the same transaction. False when the attempt was no longer pending (someone else
    recorded it first), so an outcome is never written twice."""
    if outcome == Outcome.PENDING:
        return False
    changed = conn.execute(
        update(m.AutopayAttempt.__table__)
        .where(
            and_(
                m.AutopayAttempt.id == attempt_id,
                # Stripe is the truth: a charge found after we had given up on it (error)
                # is still recorded, so the money is never unaccounted for.
                m.AutopayAttempt.status.in_(
                    [Outcome.PENDING.value, Outcome.ERROR.value]
                    if outcome == Outcome.SUCCEEDED
                    else [Outcome.PENDING.value]
                ),
            )
        )
        .values(
            status=outcome.value,
            failure_code=failure_code,
            stripe_payment_intent_id=payment_intent_id,
            completed_at=at,
        )
    ).rowcount
    if not changed:
        return False
    if outcome == Outcome.SUCCEEDED:
        attempt = conn.execute(
            select(m.AutopayAttempt.__table__).where(m.AutopayAttempt.id == attempt_id)
        ).one()
        conn.execute(
            insert(m.Payment.__table__).values(
                attempt_id=attempt_id,
                account_id=attempt.account_id,
                client_id=attempt.client_id,
                amount_cents=attempt.amount_cents,
                paid_at=at,
                stripe_payment_intent_id=payment_intent_id or f"unknown-{attempt_id}",
            )
        )
        bill_ids = select(m.AutopayAttemptBill.bill_id).where(
            m.AutopayAttemptBill.attempt_id == attempt_id
        )
        conn.execute(
            update(m.Bill.__table__)
            .where(and_(m.Bill.id.in_(bill_ids), m.Bill.status == "open"))
            .values(status="paid", paid_at=at)
        )
    return True


@dataclass(frozen=True)
class PendingAttempt:
    id: int
    client_id: str
    stripe_payment_intent_id: str | None
    attempted_at: datetime
    claimed_at: datetime


def pending_attempts(conn: Connection, account_id: str | None = None) -> list[PendingAttempt]:
    query = select(m.AutopayAttempt.__table__).where(
        m.AutopayAttempt.status == Outcome.PENDING.value
    )
    if account_id is not None:
        query = query.where(m.AutopayAttempt.account_id == account_id)
    return [
        PendingAttempt(r.id, r.client_id, r.stripe_payment_intent_id, r.attempted_at, r.claimed_at)
        for r in conn.execute(query.order_by(m.AutopayAttempt.id))
    ]


def remember_intent(conn: Connection, attempt_id: int, payment_intent_id: str | None) -> None:
    """Keep the PaymentIntent id of an attempt whose outcome is still unknown."""
    if payment_intent_id:
        conn.execute(
            update(m.AutopayAttempt.__table__)
            .where(m.AutopayAttempt.id == attempt_id)
            .values(stripe_payment_intent_id=payment_intent_id)
        )
