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
    String,
    and_,
    cast,
    column,
    delete,
    func,
    insert,
    literal,
    not_,
    select,
    values,
)

from billing_pipeline.db import models as m
from billing_pipeline.db.store import (
    CLIENT,
    SERVICES,
    SESSION,
    load_sessions_of_accounts,
)
from billing_pipeline.db.types import UTCDateTime
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


# A night's look-back window in a zone: (night, zone, starts_from, starts_before).
Window = tuple[date, str, datetime, datetime]


def insert_decided_over(
    conn: Connection, account_ids: Sequence[str], windows: Sequence[Window]
) -> dict[tuple[str, date], tuple[int, int]]:
    """`insert_decided` for many nights at once (a backfill's range): the rows of every
    window (each night's look-back in each zone of these accounts) in one statement. The
    sessions that may be eligible on some night (`decided_in_sql`, attended, the client in
    automatic billing, a service with a CPT code, on no bill, starting in some window) are
    found once, then each is listed on every night whose window holds it. Returns
    {(account id, night): (rows, cents)}."""
    if not account_ids or not windows:
        return {}
    s, c, ss, e, a = m.SessionRow, m.Client, m.SessionService, m.EligibleSession, m.Account
    w = (
        values(
            column("night", Date),
            column("tz", String),
            column("starts_from", UTCDateTime),
            column("starts_before", UTCDateTime),
            name="windows",
        )
        .data(list(windows))
        .alias("w")
    )
    billable = and_(ss.cpt.is_not(None), ss.cpt != "")
    billed = select(m.BillSession.session_id).where(m.BillSession.session_id == s.id).exists()
    candidates = (
        select(
            s.id.label("session_id"),
            c.account_id.label("account_id"),
            s.client_id.label("client_id"),
            s.starts_at.label("starts_at"),
            a.timezone.label("tz"),
            func.sum(ss.units * ss.fee_cents).filter(billable).label("amount_cents"),
        )
        .select_from(s)
        .join(c, c.id == s.client_id)
        .join(a, a.id == c.account_id)
        .join(ss, ss.session_id == s.id)
        .where(
            and_(
                c.account_id.in_(list(account_ids)),
                s.starts_at >= min(x[2] for x in windows),
                s.starts_at < max(x[3] for x in windows),
                s.status == SessionStatus.ATTENDED.value,
                c.auto_bill.is_(True),
                ~billed,
                decided_in_sql(),
            )
        )
        .group_by(s.id, c.account_id, s.client_id, s.starts_at, a.timezone)
        .having(func.bool_or(billable))
        .cte("candidates")
        .prefix_with("MATERIALIZED")
    )
    o = candidates.c
    local_date = cast(func.timezone(o.tz, func.timezone("UTC", o.starts_at)), Date)
    rows = (
        select(w.c.night, o.session_id, o.account_id, o.client_id, local_date, o.amount_cents)
        .select_from(candidates)
        .join(
            w,
            and_(
                w.c.tz == o.tz,
                o.starts_at >= w.c.starts_from,
                o.starts_at < w.c.starts_before,
            ),
        )
    )
    written = (
        insert(e)
        .from_select(
            [e.night, e.session_id, e.account_id, e.client_id, e.session_date, e.amount_cents],
            rows,
        )
        .returning(e.night, e.account_id, e.amount_cents)
        .cte("written")
    )
    found = conn.execute(
        select(
            written.c.account_id,
            written.c.night,
            func.count(),
            func.sum(written.c.amount_cents),
        ).group_by(written.c.account_id, written.c.night)
    )
    return {(aid, night): (int(n), int(cents)) for aid, night, n, cents in found}


def load_undecided_over(
    conn: Connection, account_ids: Sequence[str], starts_from: datetime, starts_before: datetime
) -> list[Session]:
    """`load_undecided` over a range's whole look-back, with each session's services as
    created (`store.services_changes` gives what each night's instant makes of them)."""
    return load_sessions_of_accounts(
        conn,
        account_ids,
        starts_from,
        starts_before,
        leave_out_billed_native=True,
        where=[not_(decided_in_sql())],
        as_created=True,
    )


def delete_nights(conn: Connection, account_ids: Sequence[str], nights: Sequence[date]) -> None:
    """The `eligible_sessions` rows of these nights of these accounts, deleted."""
    e = m.EligibleSession
    conn.execute(
        delete(e).where(and_(e.night.in_(list(nights)), e.account_id.in_(list(account_ids))))
    )
