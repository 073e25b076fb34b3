"""A night's eligible sessions decided by PostgreSQL for the common case, in one
`INSERT ... SELECT` per zone and batch of practices.

The rules are `domain.sessions.why_not_eligible` and `needs_cpt_flag`; this module restates
them in SQL only where nothing can make them differ: a native session (never flagged) whose
services and whose client's `auto_bill` were never changed (`setting_changes`), so the rows of
`sessions`, `session_services` and `clients` are what the night would read as of its instant.
Every other session of the look-back (imported ones, sessions with a services change, clients
whose `auto_bill` changed) is read and decided by the Python rules (`load_undecided`): the two
sets are complements by construction (`decided_in_sql` and its negation).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime

from sqlalchemy import (
    ColumnElement,
    Connection,
    Date,
    and_,
    cast,
    func,
    insert,
    literal,
    not_,
    select,
)

from billing_pipeline.db import models as m
from billing_pipeline.db.store import (
    CLIENT,
    SERVICES,
    SESSION,
    load_sessions_of_accounts,
)
from billing_pipeline.domain.sessions import Session, SessionSource, SessionStatus

AUTO_BILL = "auto_bill"


def sql_decides(conn: Connection) -> bool:
    """PostgreSQL computes local dates in the practice's zone; SQLite cannot (no zones), so
    there every session goes through the Python rules."""
    return conn.dialect.name == "postgresql"


def decided_in_sql() -> ColumnElement[bool]:
    """The sessions (`sessions` rows) whose eligibility the SQL below decides."""
    s = m.SessionRow
    c = m.SettingChange
    services_changed = (
        select(c.id)
        .where(and_(c.subject == SESSION, c.field == SERVICES, c.subject_id == s.id))
        .exists()
    )
    auto_bill_changed = (
        select(c.id)
        .where(and_(c.subject == CLIENT, c.field == AUTO_BILL, c.subject_id == s.client_id))
        .exists()
    )
    return and_(s.source == SessionSource.NATIVE.value, ~services_changed, ~auto_bill_changed)


def load_undecided(
    conn: Connection,
    account_ids: Sequence[str],
    starts_from: datetime,
    starts_before: datetime,
    at: datetime,
) -> list[Session]:
    """The look-back's sessions that `insert_decided` leaves to the Python rules (native ones
    already billed left out: they are neither billed again nor flagged)."""
    return load_sessions_of_accounts(
        conn,
        account_ids,
        starts_from,
        starts_before,
        at=at,
        leave_out_billed_native=True,
        where=[not_(decided_in_sql())],
    )


def insert_decided(
    conn: Connection,
    account_ids: Sequence[str],
    night: date,
    tz: str,
    starts_from: datetime,
    starts_before: datetime,
) -> dict[str, tuple[int, int]]:
    """Write the night's `eligible_sessions` rows of the sessions `decided_in_sql` of these
    accounts (all in zone `tz`) that the night bills: attended, the client in automatic
    billing, a service with a CPT code, starting in [starts_from, starts_before) (the night's
    look-back in the zone), on no bill. Returns {account id: (rows, cents)}."""
    if not account_ids:
        return {}
    s, c, ss, e = m.SessionRow, m.Client, m.SessionService, m.EligibleSession
    billable = and_(ss.cpt.is_not(None), ss.cpt != "")
    billed = select(m.BillSession.session_id).where(m.BillSession.session_id == s.id).exists()
    local_date = cast(func.timezone(tz, func.timezone("UTC", s.starts_at)), Date)
    rows = (
        select(
            literal(night, Date),
            s.id,
            c.account_id,
            s.client_id,
            local_date,
            func.sum(ss.units * ss.fee_cents).filter(billable),
        )
        .select_from(s)
        .join(c, c.id == s.client_id)
        .join(ss, ss.session_id == s.id)
        .where(
            and_(
                c.account_id.in_(list(account_ids)),
                s.starts_at >= starts_from,
                s.starts_at < starts_before,
                s.status == SessionStatus.ATTENDED.value,
                c.auto_bill.is_(True),
                ~billed,
                decided_in_sql(),
            )
        )
        .group_by(s.id, c.account_id, s.client_id, s.starts_at)
        .having(func.bool_or(billable))
    )
    written = (
        insert(e)
        .from_select(
            [e.night, e.session_id, e.account_id, e.client_id, e.session_date, e.amount_cents],
            rows,
        )
        .returning(e.account_id, e.amount_cents)
        .cte("written")
    )
    found = conn.execute(
        select(written.c.account_id, func.count(), func.sum(written.c.amount_cents)).group_by(
            written.c.account_id
        )
    )
    return {a: (int(n), int(cents)) for a, n, cents in found}
