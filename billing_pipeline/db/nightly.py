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
from billing_pipeline.db.bulk import insert_rows
from billing_pipeline.domain.billing import BillStatus, PlannedBill


def replace_rows(
    conn: Connection,
    table: type[m.EligibleSession] | type[m.ResolvedSettings],
    account_id: str | Sequence[str],
    night: date,
    rows: Sequence[Mapping[str, Any]],
) -> None:
    """The night's rows of a per-night table for the account (or accounts), replaced by
    `rows`: one DELETE, then the rows in as few INSERTs as the driver allows."""
    ids = [account_id] if isinstance(account_id, str) else list(account_id)
    conn.execute(delete(table).where(and_(table.night == night, _of(table.account_id, ids))))
    insert_rows(conn, table, rows)


def insert_eligible_rows(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    insert_rows(conn, m.EligibleSession, rows)


def _of(column: Any, ids: Sequence[str]) -> ColumnElement[bool]:
    """`column = id` for one id (the query one practice always made), else `IN`."""
    return column == ids[0] if len(ids) == 1 else column.in_(list(ids))


def eligible_session_ids_of(
    conn: Connection, account_ids: Sequence[str], night: date
) -> dict[str, list[str]]:
    """{account id: the sessions in its night's `eligible_sessions` rows, in id order}."""
    found: dict[str, list[str]] = {a: [] for a in account_ids}
    if not account_ids:
        return found
    t = m.EligibleSession
    for account_id, session_id in conn.execute(
        select(t.account_id, t.session_id)
        .where(and_(t.night == night, _of(t.account_id, account_ids)))
        .order_by(t.account_id, t.session_id)
    ):
        found[account_id].append(session_id)
    return found


def accounts_listed(conn: Connection, account_ids: Sequence[str], night: date) -> set[str]:
    """Those of these accounts with `eligible_sessions` rows on the night."""
    if not account_ids:
        return set()
    t = m.EligibleSession
    return set(
        conn.execute(
            select(t.account_id)
            .where(and_(t.night == night, _of(t.account_id, account_ids)))
            .distinct()
        ).scalars()
    )


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
    insert_rows(conn, m.CheckFlag, rows)


def insert_delivery(conn: Connection, **values: Any) -> None:
    conn.execute(insert(m.Delivery).values(**values))


def insert_deliveries(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    """Many deliveries in one statement."""
    insert_rows(conn, m.Delivery, rows)


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


def mark_steps(
    conn: Connection,
    done: Sequence[tuple[str, datetime]],
    night: date,
    step: str,
    run_id: str | None,
) -> None:
    """`mark_step` for several (account id, instant): one query for those already done, one
    INSERT for the others."""
    if not done:
        return
    already = steps_done(conn, [a for a, _ in done], night, [step])
    rows = [
        {"account_id": a, "night": night, "step": str(step), "completed_at": at, "run_id": run_id}
        for a, at in done
        if (a, str(step)) not in already
    ]
    if rows:
        conn.execute(insert(m.NightStep), rows)


def steps_done(
    conn: Connection, account_ids: Sequence[str], night: date, steps: Sequence[str]
) -> set[tuple[str, str]]:
    """The (account id, step) of these that the night has recorded done."""
    if not account_ids:
        return set()
    rows = conn.execute(
        select(m.NightStep.account_id, m.NightStep.step).where(
            and_(
                _of(m.NightStep.account_id, account_ids),
                m.NightStep.night == night,
                m.NightStep.step.in_([str(s) for s in steps]),
            )
        )
    )
    return {(a, s) for a, s in rows}


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


@dataclass(frozen=True)
class NewBill:
    """A planned bill of a practice's night, stamped with the night's bills instant."""

    account_id: str
    created_at: datetime
    bill: PlannedBill


def insert_bills(conn: Connection, night: date, new: Sequence[NewBill]) -> list[int]:
    """The bills with their sessions and lines, a few statements for all of them; their ids
    in the order of `new` (ascending, as one INSERT of them in that order would give)."""
    if not new:
        return []
    bills = [n.bill for n in new]
    rows = [
        {
            "account_id": n.account_id,
            "client_id": n.bill.client_id,
            "night": night,
            "created_at": n.created_at,
            "amount_cents": n.bill.amount_cents,
            "status": BillStatus.OPEN.value,
        }
        for n in new
    ]
    if conn.dialect.name == "postgresql":
        # Ids taken from the bills' own sequence first, then every bill in one statement
        # (db/bulk): no reliance on the order of an INSERT's RETURNING.
        bill_ids = sorted(
            conn.execute(
                select(func.nextval("bills_id_seq")).select_from(func.generate_series(1, len(rows)))
            ).scalars()
        )
        insert_rows(conn, m.Bill, [{"id": i, **row} for i, row in zip(bill_ids, rows, strict=True)])
    else:
        bill_ids = list(
            conn.execute(
                insert(m.Bill).returning(m.Bill.id, sort_by_parameter_order=True), rows
            ).scalars()
        )
    # The unique session key refuses a session that another run billed meanwhile: the
    # whole transaction rolls back and the retry finds the session billed.
    insert_rows(
        conn,
        m.BillSession,
        [
            {"session_id": sid, "bill_id": bill_id}
            for bill_id, bill in zip(bill_ids, bills, strict=True)
            for sid in bill.session_ids
        ],
    )
    insert_rows(
        conn,
        m.BillLineRow,
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
            for bill_id, bill in zip(bill_ids, bills, strict=True)
            for line in bill.lines
        ],
    )
    return bill_ids


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


def held_deliveries_of(conn: Connection, account_ids: Sequence[str], night: date) -> dict[str, int]:
    """{account id: the night's deliveries still held for its AutoPay} (0 when none)."""
    found = dict.fromkeys(account_ids, 0)
    if account_ids:
        rows = conn.execute(
            select(m.Delivery.account_id, func.count())
            .where(_held_of(account_ids, night))
            .group_by(m.Delivery.account_id)
        )
        found.update({a: int(n) for a, n in rows})
    return found


def release_held_deliveries_of(
    conn: Connection, account_ids: Sequence[str], night: date
) -> dict[str, int]:
    """Release the night's held deliveries of these accounts: {account id: how many}."""
    found = dict.fromkeys(account_ids, 0)
    if account_ids:
        rows = conn.execute(
            update(m.Delivery)
            .where(_held_of(account_ids, night))
            .values(wait_for_autopay=False)
            .returning(m.Delivery.account_id)
        )
        for (account_id,) in rows:
            found[account_id] += 1
    return found


def deliveries_by_type_of(
    conn: Connection, account_ids: Sequence[str], night: date
) -> dict[str, dict[str, int]]:
    """{account id: {document type: the night's deliveries}}."""
    found: dict[str, dict[str, int]] = {a: {} for a in account_ids}
    if account_ids:
        rows = conn.execute(
            select(m.Delivery.account_id, m.Delivery.document_type, func.count())
            .where(and_(_of(m.Delivery.account_id, account_ids), m.Delivery.night == night))
            .group_by(m.Delivery.account_id, m.Delivery.document_type)
            .order_by(m.Delivery.account_id, m.Delivery.document_type)
        )
        for account_id, kind, n in rows:
            found[account_id][kind] = int(n)
    return found


def _held_of(account_ids: Sequence[str], night: date) -> ColumnElement[bool]:
    return and_(
        _of(m.Delivery.account_id, account_ids),
        m.Delivery.night == night,
        m.Delivery.wait_for_autopay.is_(True),
    )


def deliveries_by_type(conn: Connection, account_id: str, night: date) -> dict[str, int]:
    rows = conn.execute(
        select(m.Delivery.document_type, func.count())
        .where(and_(m.Delivery.account_id == account_id, m.Delivery.night == night))
        .group_by(m.Delivery.document_type)
    )
    return {kind: int(n) for kind, n in rows}
