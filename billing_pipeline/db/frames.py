"""The rows of a run's nights as pandas DataFrames, for the Great Expectations suites
(checks/expectations.py). Ids, codes, amounts and instants only: no column here holds a name,
an email, a birth date or a diagnosis, so a failing row's values never carry PHI."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from typing import Any, TypeVar

import pandas as pd
from sqlalchemy import Connection, Select, and_, func, literal, select, union

from billing_pipeline.db import models as m

SelectT = TypeVar("SelectT", bound="Select[*tuple[Any, ...]]")
# The tables whose rows belong to a practice's night.
NightTable = type[m.Bill] | type[m.AutopayAttempt] | type[m.Delivery] | type[m.ResolvedSettings]


def _in_run(
    stmt: SelectT, table: NightTable, nights: Sequence[date], accounts: Sequence[str] | None
) -> SelectT:
    """`stmt` limited to the rows of `table` of the nights (and practices, when given)."""
    where = [table.night.in_(list(nights))]
    if accounts is not None:
        where.append(table.account_id.in_(list(accounts)))
    return stmt.where(and_(*where))


def bills_frame(
    conn: Connection, nights: Sequence[date], accounts: Sequence[str] | None = None
) -> pd.DataFrame:
    """One row per bill of the nights: its amount, the sum of its lines (0 when it has none)
    and its status."""
    lines = (
        select(m.BillLineRow.bill_id, func.sum(m.BillLineRow.amount_cents).label("total"))
        .group_by(m.BillLineRow.bill_id)
        .subquery()
    )
    stmt = select(
        m.Bill.id.label("bill_id"),
        m.Bill.account_id,
        m.Bill.amount_cents,
        func.coalesce(lines.c.total, 0).label("lines_cents"),
        m.Bill.status,
    ).join(lines, lines.c.bill_id == m.Bill.id, isouter=True)
    stmt = _in_run(stmt, m.Bill, nights, accounts).order_by(m.Bill.id)
    return pd.read_sql(stmt, conn)


def billed_sessions_frame(
    conn: Connection, nights: Sequence[date], accounts: Sequence[str] | None = None
) -> pd.DataFrame:
    """Each session on a bill of the nights, once per bill it is on (through the bill's
    sessions or its lines), whichever night made that other bill: a session on two bills
    shows twice."""
    ours = _in_run(select(m.Bill.id), m.Bill, nights, accounts)
    mine = union(
        select(m.BillSession.session_id).where(m.BillSession.bill_id.in_(ours)),
        select(m.BillLineRow.session_id).where(m.BillLineRow.bill_id.in_(ours)),
    ).subquery()
    pairs = union(
        select(m.BillSession.session_id, m.BillSession.bill_id).where(
            m.BillSession.session_id.in_(select(mine.c.session_id))
        ),
        select(m.BillLineRow.session_id, m.BillLineRow.bill_id).where(
            m.BillLineRow.session_id.in_(select(mine.c.session_id))
        ),
    ).subquery()
    stmt = select(pairs.c.session_id, pairs.c.bill_id).order_by(pairs.c.session_id, pairs.c.bill_id)
    return pd.read_sql(stmt, conn)


def autopay_attempts_frame(
    conn: Connection, nights: Sequence[date], accounts: Sequence[str] | None = None
) -> pd.DataFrame:
    """One row per AutoPay attempt of the nights: its amount, the open balance it was made
    against (the bills it charges, each open when it was claimed), its outcome and decline
    code."""
    covered = (
        select(
            m.AutopayAttemptBill.attempt_id,
            func.sum(m.Bill.amount_cents).label("open_balance_cents"),
        )
        .join(m.Bill, m.Bill.id == m.AutopayAttemptBill.bill_id)
        .group_by(m.AutopayAttemptBill.attempt_id)
        .subquery()
    )
    stmt = select(
        m.AutopayAttempt.id.label("attempt_id"),
        m.AutopayAttempt.amount_cents,
        func.coalesce(covered.c.open_balance_cents, 0).label("open_balance_cents"),
        m.AutopayAttempt.status.label("outcome"),
        m.AutopayAttempt.failure_code,
    ).join(covered, covered.c.attempt_id == m.AutopayAttempt.id, isouter=True)
    stmt = _in_run(stmt, m.AutopayAttempt, nights, accounts).order_by(m.AutopayAttempt.id)
    return pd.read_sql(stmt, conn)


def deliveries_frame(
    conn: Connection, nights: Sequence[date], accounts: Sequence[str] | None = None
) -> pd.DataFrame:
    """One row per queued document of the nights: its kind, recipient, due time and when the
    document it shares was made (null when that document is not found)."""
    made = union(
        *(
            select(
                literal(kind).label("document_type"),
                model.id.label("document_id"),
                model.created_at.label("created_at"),
            )
            for kind, model in (
                ("bill", m.Bill),
                ("superbill", m.Superbill),
                ("statement", m.Statement),
            )
        )
    ).subquery()
    stmt = select(
        m.Delivery.id.label("delivery_id"),
        m.Delivery.document_type,
        m.Delivery.recipient,
        m.Delivery.recipient_id,
        m.Delivery.scheduled_at,
        made.c.created_at,
    ).join(
        made,
        and_(
            made.c.document_type == m.Delivery.document_type,
            made.c.document_id == m.Delivery.document_id,
        ),
        isouter=True,
    )
    stmt = _in_run(stmt, m.Delivery, nights, accounts).order_by(m.Delivery.id)
    frame = pd.read_sql(stmt, conn)
    # Compared as naive UTC: both sides are UTC, and pandas is deprecating the aware arrays
    # GX compares.
    for column in ("scheduled_at", "created_at"):
        frame[column] = pd.to_datetime(frame[column], utc=True).dt.tz_convert(None)
    return frame


def resolved_settings_frame(
    conn: Connection, nights: Sequence[date], accounts: Sequence[str] | None = None
) -> pd.DataFrame:
    """Each client's resolved settings of the nights: whether AutoPay runs and the delay
    before a bill is shared."""
    stmt = select(
        m.ResolvedSettings.client_id,
        m.ResolvedSettings.night,
        m.ResolvedSettings.autopay_runs,
        m.ResolvedSettings.bill_delay_minutes,
    )
    stmt = _in_run(stmt, m.ResolvedSettings, nights, accounts).order_by(
        m.ResolvedSettings.night, m.ResolvedSettings.client_id
    )
    return pd.read_sql(stmt, conn)
