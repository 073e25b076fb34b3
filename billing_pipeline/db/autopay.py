"""AutoPay's records: claim an attempt before Stripe is called, record its outcome after.

The claim is structural: the attempt row carries the deterministic idempotency key (unique),
and a partial unique index allows one `pending` attempt per client. Two runs of the same
night, or a backfill beside the schedule, cannot both charge a client: one insert wins, the
other finds the key or the pending attempt and stands back. A pending attempt left by a
crash is taken over by one reconciling run only (compare and set on its claim time).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Connection, Row, and_, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from billing_pipeline.db import models as m
from billing_pipeline.domain.autopay import LedgerEntry, Outcome, PastAttempt, charge_amount
from billing_pipeline.domain.settings import card_identity


@dataclass(frozen=True)
class OpenBill:
    id: int
    amount_cents: int


@dataclass(frozen=True)
class ClaimedAttempt:
    """A pending attempt as a charge sends it: the stored amount, key and card."""

    id: int
    client_id: str
    idempotency_key: str
    amount_cents: int
    stripe_customer_id: str
    stripe_payment_method_id: str
    bill_ids: tuple[int, ...]
    account_id: str
    night: date
    payment_method_id: str


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


CARD_COLUMNS = (
    m.PaymentMethod.id.label("pm_id"),
    m.PaymentMethod.owner_type,
    m.PaymentMethod.owner_id,
    m.PaymentMethod.fingerprint,
    m.PaymentMethod.exp_month,
    m.PaymentMethod.exp_year,
)


def card_key(row: Row[*tuple[Any, ...]]) -> str:
    """The identity of the card of a row selected with CARD_COLUMNS."""
    return card_identity(
        owner_type=row.owner_type,
        owner_id=row.owner_id,
        fingerprint=row.fingerprint,
        exp_month=row.exp_month,
        exp_year=row.exp_year,
        payment_method_id=row.pm_id,
    )


def attempt_history(conn: Connection, client_id: str) -> list[PastAttempt]:
    """The client's attempts in order, each with the identity of its card (payer, number,
    expiry), as the three-failures rule counts them."""
    rows = conn.execute(
        select(m.AutopayAttempt.night, m.AutopayAttempt.status, *CARD_COLUMNS)
        .join(m.PaymentMethod, m.PaymentMethod.id == m.AutopayAttempt.payment_method_id)
        .where(m.AutopayAttempt.client_id == client_id)
        .order_by(m.AutopayAttempt.night, m.AutopayAttempt.id)
    )
    return [PastAttempt(r.night, card_key(r), Outcome(r.status)) for r in rows]


def attempt_exists(conn: Connection, key: str) -> bool:
    return (
        conn.execute(
            select(m.AutopayAttempt.id).where(m.AutopayAttempt.idempotency_key == key)
        ).first()
        is not None
    )


class ClaimRefused(StrEnum):
    TAKEN = "claimed_by_another_run"
    BILLS_CHANGED = "bills_changed_during_claim"


class _BillsChanged(Exception):
    pass


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
    owner: str,
    lease_expires_at: datetime,
) -> ClaimedAttempt | ClaimRefused:
    """Insert the pending attempt and the bills it covers, or say why not: another run holds
    the key or an attempt in flight for this client, or the bills changed since they were
    read. The caller commits before calling Stripe.

    Why the check after the insert: the bills were read before it, and another run may have
    recorded a success for them in between. Our insert waits for any such run (the pending
    attempt it replaced sits in the same unique index), so a fresh read after it sees the
    bills as they are now; on PostgreSQL each statement of a READ COMMITTED transaction does.
    """
    amount = charge_amount([b.amount_cents for b in bills])
    try:
        with conn.begin_nested():
            attempt_id = conn.execute(
                insert(m.AutopayAttempt)
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
                    owner=owner,
                    lease_expires_at=lease_expires_at,
                )
                .returning(m.AutopayAttempt.id)
            ).scalar_one()
            conn.execute(
                insert(m.AutopayAttemptBill),
                [{"attempt_id": attempt_id, "bill_id": b.id} for b in bills],
            )
            if not _bills_still_claimable(conn, attempt_id, bills):
                raise _BillsChanged
    except IntegrityError:
        return ClaimRefused.TAKEN
    except _BillsChanged:
        return ClaimRefused.BILLS_CHANGED
    claimed = claimed_attempt(conn, attempt_id)
    assert claimed is not None
    return claimed


def _bills_still_claimable(conn: Connection, attempt_id: int, bills: list[OpenBill]) -> bool:
    ids = [b.id for b in bills]
    now = {
        r.id: (r.status, r.amount_cents)
        for r in conn.execute(
            select(m.Bill.id, m.Bill.status, m.Bill.amount_cents).where(m.Bill.id.in_(ids))
        )
    }
    if any(now.get(b.id) != ("open", b.amount_cents) for b in bills):
        return False
    other = conn.execute(
        select(m.AutopayAttemptBill.bill_id)
        .join(m.AutopayAttempt, m.AutopayAttempt.id == m.AutopayAttemptBill.attempt_id)
        .where(
            and_(
                m.AutopayAttemptBill.bill_id.in_(ids),
                m.AutopayAttempt.id != attempt_id,
                m.AutopayAttempt.status.in_([Outcome.PENDING.value, Outcome.SUCCEEDED.value]),
            )
        )
        .limit(1)
    ).first()
    return other is None


def claimed_attempt(conn: Connection, attempt_id: int) -> ClaimedAttempt | None:
    """What a charge of this attempt sends: its stored amount, key and card."""
    row = conn.execute(
        select(
            m.AutopayAttempt.id,
            m.AutopayAttempt.account_id,
            m.AutopayAttempt.client_id,
            m.AutopayAttempt.night,
            m.AutopayAttempt.idempotency_key,
            m.AutopayAttempt.amount_cents,
            m.AutopayAttempt.payment_method_id,
            m.PaymentMethod.stripe_customer_id,
            m.PaymentMethod.stripe_payment_method_id,
        )
        .join(m.PaymentMethod, m.PaymentMethod.id == m.AutopayAttempt.payment_method_id)
        .where(m.AutopayAttempt.id == attempt_id)
    ).first()
    if row is None:
        return None
    bill_ids = conn.execute(
        select(m.AutopayAttemptBill.bill_id)
        .where(m.AutopayAttemptBill.attempt_id == attempt_id)
        .order_by(m.AutopayAttemptBill.bill_id)
    ).scalars()
    return ClaimedAttempt(
        id=row.id,
        client_id=row.client_id,
        idempotency_key=row.idempotency_key,
        amount_cents=row.amount_cents,
        stripe_customer_id=row.stripe_customer_id,
        stripe_payment_method_id=row.stripe_payment_method_id,
        bill_ids=tuple(bill_ids),
        account_id=row.account_id,
        night=row.night,
        payment_method_id=row.payment_method_id,
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
        update(m.AutopayAttempt)
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
            completed_at=at,
            # Keep an id learnt earlier when this answer carries none (a localstripe decline).
            **({"stripe_payment_intent_id": payment_intent_id} if payment_intent_id else {}),
        )
    ).rowcount
    if not changed:
        return False
    if outcome == Outcome.SUCCEEDED:
        attempt = conn.execute(
            select(m.AutopayAttempt.__table__).where(m.AutopayAttempt.id == attempt_id)
        ).one()
        conn.execute(
            insert(m.Payment).values(
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
            update(m.Bill)
            .where(and_(m.Bill.id.in_(bill_ids), m.Bill.status == "open"))
            .values(status="paid", paid_at=at)
        )
        # A bill that went out before this outcome was known (it had waited past the limit)
        # is shared again, now paid: the client's copy is not wrong for long.
        conn.execute(
            update(m.Delivery)
            .where(
                and_(
                    m.Delivery.document_type == "bill",
                    m.Delivery.document_id.in_(bill_ids),
                    m.Delivery.shared_before_outcome.is_(True),
                    m.Delivery.reshare_due_at.is_(None),
                )
            )
            .values(reshare_due_at=datetime.now(UTC))
        )
    return True


@dataclass(frozen=True)
class PendingAttempt:
    id: int
    client_id: str
    night: date
    idempotency_key: str
    payment_method_id: str
    stripe_customer_id: str
    amount_cents: int
    stripe_payment_intent_id: str | None
    attempted_at: datetime
    claimed_at: datetime
    owner: str | None
    lease_expires_at: datetime | None


def pending_attempts(conn: Connection, account_id: str | None = None) -> list[PendingAttempt]:
    """Attempts whose outcome we have not written, oldest first."""
    a = m.AutopayAttempt
    query = (
        select(
            a.id,
            a.client_id,
            a.night,
            a.idempotency_key,
            a.payment_method_id,
            m.PaymentMethod.stripe_customer_id,
            a.amount_cents,
            a.stripe_payment_intent_id,
            a.attempted_at,
            a.claimed_at,
            a.owner,
            a.lease_expires_at,
        )
        .join(m.PaymentMethod, m.PaymentMethod.id == a.payment_method_id)
        .where(a.status == Outcome.PENDING.value)
    )
    if account_id is not None:
        query = query.where(a.account_id == account_id)
    return [PendingAttempt(**r._asdict()) for r in conn.execute(query.order_by(a.id))]


def take_over(
    conn: Connection, attempt: PendingAttempt, owner: str, lease_expires_at: datetime
) -> bool:
    """Take a dead owner's pending attempt over, to settle it: only one run can, because its
    owner and claim time must still be the ones we read (compare and set)."""
    a = m.AutopayAttempt
    same_owner = a.owner.is_(None) if attempt.owner is None else a.owner == attempt.owner
    return bool(
        conn.execute(
            update(a)
            .where(
                and_(
                    a.id == attempt.id,
                    a.status == Outcome.PENDING.value,
                    a.claimed_at == attempt.claimed_at,
                    same_owner,
                )
            )
            .values(claimed_at=datetime.now(UTC), owner=owner, lease_expires_at=lease_expires_at)
        ).rowcount
    )


def open_amounts_of_covered_bills(conn: Connection, attempt_id: int) -> tuple[int, list[int]]:
    """(how many bills the attempt covers, the amounts of those still open)."""
    rows = conn.execute(
        select(m.Bill.status, m.Bill.amount_cents)
        .join(m.AutopayAttemptBill, m.AutopayAttemptBill.bill_id == m.Bill.id)
        .where(m.AutopayAttemptBill.attempt_id == attempt_id)
    ).all()
    return len(rows), [r.amount_cents for r in rows if r.status == "open"]


def note_unknown(
    conn: Connection, attempt_id: int, payment_intent_id: str | None, reason: str | None
) -> None:
    """An attempt whose outcome is still unknown: keep what we learnt (the PaymentIntent id,
    if Stripe gave one, and why we do not know) for reconciliation and for `explain`."""
    values: dict[str, object] = {"failure_code": reason}
    if payment_intent_id:
        values["stripe_payment_intent_id"] = payment_intent_id
    conn.execute(
        update(m.AutopayAttempt)
        .where(
            and_(
                m.AutopayAttempt.id == attempt_id,
                m.AutopayAttempt.status == Outcome.PENDING.value,
            )
        )
        .values(**values)
    )


# --- Finance -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Books:
    """Our side of a reconciliation, read in one statement (one snapshot): the payments of
    these nights' attempts, and the attempts still pending with their owners."""

    payments: list[LedgerEntry]
    pending: list[PendingAttempt]


def books(conn: Connection, account_ids: list[str], nights: list[date]) -> Books:
    a = m.AutopayAttempt
    rows = conn.execute(
        select(
            a.id,
            a.account_id,
            a.client_id,
            a.night,
            a.idempotency_key,
            a.payment_method_id,
            a.amount_cents,
            a.stripe_payment_intent_id,
            a.attempted_at,
            a.claimed_at,
            a.owner,
            a.lease_expires_at,
            a.status,
            m.Payment.stripe_payment_intent_id.label("paid_intent"),
            m.Payment.amount_cents.label("paid_cents"),
        )
        .outerjoin(m.Payment, m.Payment.attempt_id == a.id)
        .where(
            and_(
                a.account_id.in_(account_ids),
                a.night.in_(nights),
                or_(a.status == Outcome.PENDING.value, m.Payment.id.is_not(None)),
            )
        )
    ).all()
    return Books(
        payments=[
            LedgerEntry(r.paid_intent, str(r.id), r.night, r.paid_cents, r.account_id)
            for r in rows
            if r.paid_intent is not None
        ],
        pending=[
            PendingAttempt(
                id=r.id,
                client_id=r.client_id,
                night=r.night,
                idempotency_key=r.idempotency_key,
                payment_method_id=r.payment_method_id,
                stripe_customer_id="",
                amount_cents=r.amount_cents,
                stripe_payment_intent_id=r.stripe_payment_intent_id,
                attempted_at=r.attempted_at,
                claimed_at=r.claimed_at,
                owner=r.owner,
                lease_expires_at=r.lease_expires_at,
            )
            for r in rows
            if r.status == Outcome.PENDING.value
        ],
    )


def stripe_customers(conn: Connection, account_ids: list[str]) -> set[str]:
    """The Stripe customers of these practices' cards on file."""
    return set(
        conn.execute(
            select(m.PaymentMethod.stripe_customer_id).where(
                m.PaymentMethod.account_id.in_(account_ids)
            )
        ).scalars()
    )


@dataclass(frozen=True)
class AttemptForStaff:
    night: date
    attempted_at: datetime
    amount_cents: int
    payer: str
    status: str
    failure_code: str | None
    payment_method_id: str
    brand: str
    last4: str
    card: str  # its identity (payer, number, expiry): `domain.settings.card_identity`


def attempts_for_staff(conn: Connection, client_id: str) -> list[AttemptForStaff]:
    """A client's attempts in order, with the card each used (brand and last 4 only)."""
    a = m.AutopayAttempt
    rows = conn.execute(
        select(
            a.night,
            a.attempted_at,
            a.amount_cents,
            a.payer,
            a.status,
            a.failure_code,
            a.payment_method_id,
            m.PaymentMethod.brand,
            m.PaymentMethod.last4,
            *CARD_COLUMNS,
        )
        .join(m.PaymentMethod, m.PaymentMethod.id == a.payment_method_id)
        .where(a.client_id == client_id)
        .order_by(a.attempted_at, a.id)
    )
    return [
        AttemptForStaff(
            night=r.night,
            attempted_at=r.attempted_at,
            amount_cents=r.amount_cents,
            payer=r.payer,
            status=r.status,
            failure_code=r.failure_code,
            payment_method_id=r.payment_method_id,
            brand=r.brand,
            last4=r.last4,
            card=card_key(r),
        )
        for r in rows
    ]
