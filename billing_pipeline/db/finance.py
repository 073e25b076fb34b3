"""Finance's figures per practice and night: the rows they are computed from (pandas
DataFrames read with `pandas.read_sql`), the `finance_daily` table's writes, and its export.
Ids, counts and integer cents only."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime

import pandas as pd
from sqlalchemy import Connection, and_, delete, func, insert, select

from billing_pipeline.db import models as m

FIGURES = (
    "bills",
    "bills_cents",
    "collected_cents",
    "charges_succeeded",
    "charges_declined",
    "declined_cents",
    "charges_requires_action",
    "open_balance_cents",
    "documents_shared",
)
COLUMNS = ("account_id", "night", *FIGURES)


@dataclass(frozen=True)
class FinanceInputs:
    """What a run's nights' figures are made of, per practice and night: the bills (every
    night up to the last of the run, for the open balance), the AutoPay attempts by outcome
    and the payments (likewise), and the documents shared."""

    bills: pd.DataFrame  # account_id, night, bills, bills_cents
    attempts: pd.DataFrame  # account_id, night, status, attempts, amount_cents
    payments: pd.DataFrame  # account_id, night, collected_cents
    shared: pd.DataFrame  # account_id, night, documents_shared


def finance_inputs(
    conn: Connection, nights: Sequence[date], accounts: Sequence[str]
) -> FinanceInputs:
    last = max(nights)
    first = min(nights)
    bills = pd.read_sql(
        select(
            m.Bill.account_id,
            m.Bill.night,
            func.count().label("bills"),
            func.sum(m.Bill.amount_cents).label("bills_cents"),
        )
        .where(and_(m.Bill.night <= last, m.Bill.account_id.in_(list(accounts))))
        .group_by(m.Bill.account_id, m.Bill.night),
        conn,
    )
    attempts = pd.read_sql(
        select(
            m.AutopayAttempt.account_id,
            m.AutopayAttempt.night,
            m.AutopayAttempt.status,
            func.count().label("attempts"),
            func.sum(m.AutopayAttempt.amount_cents).label("amount_cents"),
        )
        .where(
            and_(
                m.AutopayAttempt.night.between(first, last),
                m.AutopayAttempt.account_id.in_(list(accounts)),
            )
        )
        .group_by(m.AutopayAttempt.account_id, m.AutopayAttempt.night, m.AutopayAttempt.status),
        conn,
    )
    payments = pd.read_sql(
        select(
            m.Payment.account_id,
            m.AutopayAttempt.night,
            func.sum(m.Payment.amount_cents).label("collected_cents"),
        )
        .join(m.AutopayAttempt, m.AutopayAttempt.id == m.Payment.attempt_id)
        .where(and_(m.AutopayAttempt.night <= last, m.Payment.account_id.in_(list(accounts))))
        .group_by(m.Payment.account_id, m.AutopayAttempt.night),
        conn,
    )
    shared = pd.read_sql(
        select(
            m.Delivery.account_id,
            m.Delivery.night,
            func.count().label("documents_shared"),
        )
        .where(
            and_(
                m.Delivery.night.between(first, last),
                m.Delivery.delivered_at.is_not(None),
                m.Delivery.account_id.in_(list(accounts)),
            )
        )
        .group_by(m.Delivery.account_id, m.Delivery.night),
        conn,
    )
    return FinanceInputs(bills, attempts, payments, shared)


def replace_finance_rows(
    conn: Connection,
    figures: pd.DataFrame,
    accounts: Sequence[str],
    nights: Sequence[date],
    computed_at: datetime,
) -> int:
    """Replace the practices' rows of the nights with `figures` (one transaction: the
    caller's)."""
    conn.execute(
        delete(m.FinanceDaily).where(
            and_(
                m.FinanceDaily.account_id.in_(list(accounts)),
                m.FinanceDaily.night.in_(list(nights)),
            )
        )
    )
    rows = [
        {
            "account_id": str(r["account_id"]),
            "night": r["night"],
            **{k: int(r[k]) for k in FIGURES},
            "computed_at": computed_at,
        }
        for r in figures.to_dict("records")
    ]
    if rows:
        conn.execute(insert(m.FinanceDaily), rows)
    return len(rows)


def finance_month(conn: Connection, first: date, last: date) -> pd.DataFrame:
    """The stored rows of the nights first..last, by night then practice."""
    return pd.read_sql(
        select(*(getattr(m.FinanceDaily, c) for c in COLUMNS))
        .where(m.FinanceDaily.night.between(first, last))
        .order_by(m.FinanceDaily.night, m.FinanceDaily.account_id),
        conn,
    )
