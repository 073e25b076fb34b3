"""The queries of a night's steps for one account: eligible sessions, resolved settings, bills,
superbills, statements, deliveries and the steps done. Each takes the caller's Connection and
never commits; `services.nightly` decides what to write."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, and_, delete, func, insert, or_, select, update
from sqlalchemy.orm import InstrumentedAttribute

from billing_pipeline.db import models as m
from billing_pipeline.domain.billing import BillStatus, PlannedBill


def replace_rows(
    conn: Connection,
    table: type[m.EligibleSession] | type[m.ResolvedSettings],
    account_id: str,
    night: date,
    rows: Sequence[Mapping[str, Any]],
) -> None:
    """The night's rows of a per-night table for the account, replaced by `rows`."""
    conn.execute(delete(table).where(and_(table.night == night, table.account_id == account_id)))
    if rows:
        conn.execute(insert(table), list(rows))


def eligible_session_ids(conn: Connection, account_id: str, night: date) -> list[str]:
    """The sessions in the night's `eligible_sessions` rows for the account."""
    return list(
        conn.execute(
            select(m.EligibleSession.session_id)
            .where(
                and_(m.EligibleSession.night == night, m.EligibleSession.account_id == account_id)
            )
            .order_by(m.EligibleSession.session_id)
        ).scalars()
    )


@dataclass(frozen=True)
class ResolvedAutopay:
    """What a night's resolved_settings row says AutoPay does for a client."""

    client_id: str
    runs: bool
    reason: str
    payer: str
    payer_id: str | None
    payment_method_id: str | None


def resolved_autopay(conn: Connection, account_id: str, night: date) -> dict[str, ResolvedAutopay]:
    """{client id: AutoPay's decision} from the night's `resolved_settings` rows."""
    t = m.ResolvedSettings
    rows = conn.execute(
        select(
            t.client_id,
            t.autopay_runs,
            t.autopay_reason,
            t.payer,
            t.payer_id,
            t.payer_payment_method_id,
        ).where(and_(t.night == night, t.account_id == account_id))
    )
    return {r.client_id: ResolvedAutopay(*r) for r in rows}


def flagged_session_ids(conn: Connection, check: str, session_ids: Collection[str]) -> set[str]:
    if not session_ids:
        return set()
    return set(
        conn.execute(
            select(m.CheckFlag.session_id).where(
                and_(m.CheckFlag.check == check, m.CheckFlag.session_id.in_(list(session_ids)))
            )
        ).scalars()
    )


def insert_flags(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    if rows:
        conn.execute(insert(m.CheckFlag), list(rows))


def insert_delivery(conn: Connection, **values: Any) -> None:
    conn.execute(insert(m.Delivery).values(**values))


def mark_step(
    conn: Connection, account_id: str, night: date, step: str, at: datetime, run_id: str | None
) -> None:
    """Record that a step (or one asset of a step: `STEP_RECORDS`) did the practice's night."""
    if not step_done(conn, account_id, night, step):
        conn.execute(
            insert(m.NightStep).values(
                account_id=account_id, night=night, step=str(step), completed_at=at, run_id=run_id
            )
        )


def step_done(conn: Connection, account_id: str, night: date, step: str) -> bool:
    found = conn.execute(
        select(m.NightStep.step).where(
            and_(
                m.NightStep.account_id == account_id,
                m.NightStep.night == night,
                m.NightStep.step == str(step),
            )
        )
    ).first()
    return found is not None


def insert_bill(
    conn: Connection, account_id: str, night: date, created_at: datetime, bill: PlannedBill
) -> int:
    bill_id: int = conn.execute(
        insert(m.Bill)
        .values(
            account_id=account_id,
            client_id=bill.client_id,
            night=night,
            created_at=created_at,
            amount_cents=bill.amount_cents,
            status=BillStatus.OPEN.value,
        )
        .returning(m.Bill.id)
    ).scalar_one()
    # The unique session key refuses a session that another run billed meanwhile: the
    # whole transaction rolls back and the retry finds the session billed.
    conn.execute(
        insert(m.BillSession),
        [{"session_id": sid, "bill_id": bill_id} for sid in bill.session_ids],
    )
    conn.execute(
        insert(m.BillLineRow),
        [
            {
                "bill_id": bill_id,
                "session_id": line.session_id,
                "cpt": line.cpt,
                "units": line.units,
                "fee_cents": line.fee_cents,
                "modifiers": ",".join(line.modifiers),
                "amount_cents": line.amount_cents,
            }
            for line in bill.lines
        ],
    )
    return bill_id


def clients_with_document(
    conn: Connection,
    table: type[m.Superbill] | type[m.Statement],
    account_id: str,
    month: str,
) -> set[str]:
    """Clients of the account that already have the month's superbill (or statement)."""
    return set(
        conn.execute(
            select(table.client_id).where(
                and_(table.account_id == account_id, table.month == month)
            )
        ).scalars()
    )


def insert_superbill(
    conn: Connection,
    account_id: str,
    client_id: str,
    month: str,
    night: date,
    created_at: datetime,
    session_ids: Sequence[str],
) -> int:
    sb_id: int = conn.execute(
        insert(m.Superbill)
        .values(
            account_id=account_id,
            client_id=client_id,
            month=month,
            night=night,
            created_at=created_at,
        )
        .returning(m.Superbill.id)
    ).scalar_one()
    conn.execute(
        insert(m.SuperbillSession),
        [{"superbill_id": sb_id, "session_id": sid} for sid in session_ids],
    )
    return sb_id


def insert_statement(
    conn: Connection,
    account_id: str,
    client_id: str,
    month: str,
    night: date,
    created_at: datetime,
    open_balance_cents: int,
) -> int:
    st_id: int = conn.execute(
        insert(m.Statement)
        .values(
            account_id=account_id,
            client_id=client_id,
            month=month,
            night=night,
            created_at=created_at,
            open_balance_cents=open_balance_cents,
        )
        .returning(m.Statement.id)
    ).scalar_one()
    return st_id


def open_balance_at(conn: Connection, client_ids: Sequence[str], at: datetime) -> dict[str, int]:
    """Each client's open balance as it stood at instant `at`: bills made by then and not
    paid by then. Computed from history so the answer does not depend on run order."""
    rows = conn.execute(
        select(m.Bill.client_id, func.coalesce(func.sum(m.Bill.amount_cents), 0))
        .where(
            and_(
                m.Bill.client_id.in_(list(client_ids)),
                m.Bill.created_at <= at,
                or_(m.Bill.paid_at.is_(None), m.Bill.paid_at > at),
            )
        )
        .group_by(m.Bill.client_id)
    )
    return {cid: int(total) for cid, total in rows}


def _counts_in(
    conn: Connection,
    at: InstrumentedAttribute[datetime],
    client: InstrumentedAttribute[str],
    client_ids: Sequence[str],
    start: datetime,
    end: datetime,
) -> dict[str, int]:
    rows = conn.execute(
        select(client, func.count())
        .where(and_(client.in_(list(client_ids)), at >= start, at < end))
        .group_by(client)
    )
    return {cid: int(n) for cid, n in rows}


def bills_made_in(
    conn: Connection, client_ids: Sequence[str], start: datetime, end: datetime
) -> dict[str, int]:
    """Per client, the bills made in [start, end)."""
    return _counts_in(conn, m.Bill.created_at, m.Bill.client_id, client_ids, start, end)


def payments_made_in(
    conn: Connection, client_ids: Sequence[str], start: datetime, end: datetime
) -> dict[str, int]:
    """Per client, the payments made in [start, end)."""
    return _counts_in(conn, m.Payment.paid_at, m.Payment.client_id, client_ids, start, end)


def _held(account_id: str, night: date) -> ColumnElement[bool]:
    return and_(
        m.Delivery.account_id == account_id,
        m.Delivery.night == night,
        m.Delivery.wait_for_autopay.is_(True),
    )


def held_deliveries(conn: Connection, account_id: str, night: date) -> int:
    """The night's deliveries still held for its AutoPay."""
    return int(conn.execute(select(func.count()).where(_held(account_id, night))).scalar_one())


def release_held_deliveries(conn: Connection, account_id: str, night: date) -> int:
    released = conn.execute(
        update(m.Delivery).where(_held(account_id, night)).values(wait_for_autopay=False)
    ).rowcount
    return int(released or 0)


def deliveries_by_type(conn: Connection, account_id: str, night: date) -> dict[str, int]:
    rows = conn.execute(
        select(m.Delivery.document_type, func.count())
        .where(and_(m.Delivery.account_id == account_id, m.Delivery.night == night))
        .group_by(m.Delivery.document_type)
    )
    return {kind: int(n) for kind, n in rows}
