"""Reading and creating practice records through the domain rules.

Every function takes an open SQLAlchemy Connection inside the caller's transaction; none
commits. The scenario loader and production share these.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import ColumnElement, Connection, Row, and_, insert, or_, select
from sqlalchemy.exc import NoResultFound

from billing_pipeline.db import models as m
from billing_pipeline.domain.history import Change, overlay, values_at
from billing_pipeline.domain.practice import AccountView, ClientView, ContactView, Practice
from billing_pipeline.domain.sessions import Service, Session, SessionSource, SessionStatus
from billing_pipeline.domain.settings import (
    SHARING_FIELDS,
    BillCreation,
    Card,
    DefaultsChange,
    DefaultsVersion,
    Sharing,
    card_identity,
    defaults_history,
    sharing_for_new_client,
)

# --- Changes over time -------------------------------------------------------------------------
# The rows of accounts, clients, billing contacts and sessions hold the values they were created
# with; `setting_changes` holds each later value from its instant on. The reads below take the
# instant of the step that reads ("as of"), None for the latest values.

ACCOUNT = "account"
CLIENT = "client"
BILLING_CONTACT = "billing_contact"
SESSION = "session"
SERVICES = "services"

ACCOUNT_FIELDS = ("bill_creation", "superbill_day_of_month", "autopay_enabled")
CLIENT_SWITCHES = ("auto_bill", "superbills_enabled", "autopay_enabled")
CLIENT_FIELDS = (*CLIENT_SWITCHES, *SHARING_FIELDS, "billing_contact_id", "payment_method_id")
CONTACT_FIELDS = ("autopay_enabled", "payment_method_id")

ChangeKey = tuple[str, str, str]  # (subject, subject_id, field)


@dataclass(frozen=True)
class NewChange:
    """A value of a record's field in force from `effective_at` (JSON-able `value`)."""

    account_id: str
    subject: str
    subject_id: str
    field: str
    value: Any
    effective_at: datetime


def record_changes(conn: Connection, changes: Sequence[NewChange], recorded_at: datetime) -> None:
    """Write changes into the history (the unique key refuses a second change of one field
    of one record at one instant)."""
    if changes:
        conn.execute(
            insert(m.SettingChange),
            [
                {
                    "account_id": c.account_id,
                    "subject": c.subject,
                    "subject_id": c.subject_id,
                    "field": c.field,
                    "value": json.dumps(c.value, sort_keys=True),
                    "effective_at": c.effective_at,
                    "recorded_at": recorded_at,
                }
                for c in changes
            ],
        )


def _changes(rows: Iterable[Row[*tuple[Any, ...]]]) -> list[tuple[ChangeKey, Change[Any]]]:
    return [
        ((r.subject, r.subject_id, r.field), Change(r.effective_at, json.loads(r.value)))
        for r in rows
    ]


def changes_in_force(
    conn: Connection, account_id: str, at: datetime | None, subject: str | None = None
) -> dict[ChangeKey, Change[Any]]:
    """The account's changes in force at `at` (None: the latest), one per record's field."""
    return _changes_in_force_of(conn, [account_id], at, subject)


def _changes_in_force_of(
    conn: Connection, account_ids: Sequence[str], at: datetime | None, subject: str | None = None
) -> dict[ChangeKey, Change[Any]]:
    """`changes_in_force` of several accounts at once (a key names its record, and a record
    belongs to one account, so the accounts' answers do not mix)."""
    query = select(m.SettingChange.__table__).where(_of(m.SettingChange.account_id, account_ids))
    if at is not None:
        query = query.where(m.SettingChange.effective_at <= at)
    if subject is not None:
        query = query.where(m.SettingChange.subject == subject)
    return values_at(_changes(conn.execute(query)), at)


def field_history(conn: Connection, subject: str, subject_id: str) -> list[tuple[str, Change[Any]]]:
    """Every change of one record, in instant order: (field, change)."""
    rows = conn.execute(
        select(m.SettingChange.__table__)
        .where(and_(m.SettingChange.subject == subject, m.SettingChange.subject_id == subject_id))
        .order_by(m.SettingChange.effective_at, m.SettingChange.id)
    )
    return [(key[2], change) for key, change in _changes(rows)]


def _own(
    in_force: Mapping[ChangeKey, Change[Any]], subject: str, subject_id: str
) -> dict[str, Change[Any]]:
    return {f: c for (s, i, f), c in in_force.items() if s == subject and i == subject_id}


def _sharing(row: Mapping[str, Any]) -> Sharing:
    return _sharing_of(
        bool(row["share_bills"]),
        int(row["bill_delay_minutes"]),
        bool(row["share_superbills"]),
        int(row["superbill_delay_minutes"]),
        bool(row["share_statements"]),
        int(row["statement_delay_minutes"]),
    )


@lru_cache(maxsize=4096)
def _sharing_of(
    share_bills: bool,
    bill_delay_minutes: int,
    share_superbills: bool,
    superbill_delay_minutes: int,
    share_statements: bool,
    statement_delay_minutes: int,
) -> Sharing:
    """One (immutable) Sharing per distinct set of values: a night reads hundreds of
    thousands of clients with a few dozen of them. A value the rules refuse raises each time
    (exceptions are not cached)."""
    return Sharing(
        share_bills=share_bills,
        bill_delay_minutes=bill_delay_minutes,
        share_superbills=share_superbills,
        superbill_delay_minutes=superbill_delay_minutes,
        share_statements=share_statements,
        statement_delay_minutes=statement_delay_minutes,
    )


def _account_view(
    row: Row[*tuple[Any, ...]], in_force: Mapping[ChangeKey, Change[Any]] | None = None
) -> AccountView:
    values = overlay(
        {f: getattr(row, f) for f in ACCOUNT_FIELDS}, _own(in_force or {}, ACCOUNT, row.id)
    )
    return AccountView(
        id=row.id,
        timezone=row.timezone,
        bill_creation=BillCreation(values["bill_creation"]),
        superbill_day_of_month=int(values["superbill_day_of_month"]),
        autopay_enabled=bool(values["autopay_enabled"]),
    )


def list_accounts(conn: Connection, account_ids: Iterable[str] | None = None) -> list[AccountView]:
    """The accounts with their settings as they started (each night reads its own instant's
    through `load_practice`); the id and timezone never change."""
    query = select(m.Account.__table__).order_by(m.Account.id)
    if account_ids is not None:
        query = query.where(m.Account.id.in_(list(account_ids)))
    return [_account_view(r) for r in conn.execute(query)]


def _cards(conn: Connection, account_id: str) -> dict[str, Card]:
    return _cards_of(conn, [account_id])


# What a practice's cards are read with (never a card number: Stripe keeps it).
CARD_COLUMNS = (
    "id",
    "brand",
    "last4",
    "exp_month",
    "exp_year",
    "owner_type",
    "owner_id",
    "fingerprint",
)


def _cards_of(conn: Connection, account_ids: Sequence[str]) -> dict[str, Card]:
    pm = m.PaymentMethod
    rows = conn.execute(
        select(*(getattr(pm, name) for name in CARD_COLUMNS)).where(_of(pm.account_id, account_ids))
    ).all()
    return {
        r.id: Card(
            r.id,
            r.brand,
            r.last4,
            r.exp_month,
            r.exp_year,
            card_identity(
                owner_type=r.owner_type,
                owner_id=r.owner_id,
                fingerprint=r.fingerprint,
                exp_month=r.exp_month,
                exp_year=r.exp_year,
                payment_method_id=r.id,
            ),
        )
        for r in rows
    }


def card_keys(conn: Connection, account_id: str) -> dict[str, str]:
    """{payment method id: which card it is for AutoPay's count of failures (`Card.key`)}."""
    return {pm_id: card.key for pm_id, card in _cards(conn, account_id).items()}


# What the nightly rules read of a client: settings and ids. Never the name, email, birth date,
# address or insurance id: what is not read cannot leak into an error or a log.
CLIENT_SETTINGS_COLUMNS = (
    m.Client.id,
    m.Client.account_id,
    m.Client.billing_contact_id,
    m.Client.payment_method_id,
    m.Client.auto_bill,
    m.Client.superbills_enabled,
    m.Client.autopay_enabled,
    m.Client.share_bills,
    m.Client.bill_delay_minutes,
    m.Client.share_superbills,
    m.Client.superbill_delay_minutes,
    m.Client.share_statements,
    m.Client.statement_delay_minutes,
)


CLIENT_SETTINGS_KEYS = tuple(c.key for c in CLIENT_SETTINGS_COLUMNS)


def load_practice(conn: Connection, account_id: str, at: datetime | None = None) -> Practice:
    """The practice as it stood at instant `at` (None: with every change recorded): each
    setting, billing contact and card in force then (a change at `at` is in force)."""
    return load_practices(conn, [account_id], at)[account_id]


def _of(column: Any, ids: Sequence[str]) -> Any:
    """`column = id` for one id (the query one practice always made), else `IN`."""
    return column == ids[0] if len(ids) == 1 else column.in_(list(ids))


def load_practices(
    conn: Connection,
    account_ids: Sequence[str],
    at: datetime | None = None,
    *,
    cards: bool = True,
    listed_on: date | None = None,
) -> dict[str, Practice]:
    """`load_practice` of several practices as they stood at the same instant, in five
    queries whatever their number (practices in one zone share their nights' instants).
    `cards=False`: no card is read (every client's and contact's `card` is None), for a step
    that decides nothing about payment (bills: what it plans needs bill creation, sharing and
    billing contact ids). `listed_on`: only the clients with `eligible_sessions` rows that
    night (a night's bills are of those clients alone; at an EHR's scale most clients of a
    practice have no session that night)."""
    ids = list(account_ids)
    if not ids:
        return {}
    in_force = _changes_in_force_of(conn, ids, at)
    # Each record's own changes, found by key (not by a scan of every change per record).
    own: dict[tuple[str, str], dict[str, Change[Any]]] = {}
    for (subject, subject_id, name), change in in_force.items():
        own.setdefault((subject, subject_id), {})[name] = change
    of_accounts = {k: c for k, c in in_force.items() if k[0] == ACCOUNT}
    accounts = {
        r.id: _account_view(r, of_accounts)
        for r in conn.execute(select(m.Account.__table__).where(_of(m.Account.id, ids)))
    }
    missing = [a for a in ids if a not in accounts]
    if missing:  # as `.one()` did for one practice
        raise NoResultFound(f"no account {missing[0]}")
    found_cards = _cards_of(conn, ids) if cards else {}
    contacts: dict[str, dict[str, ContactView]] = {a: {} for a in ids}
    for r in conn.execute(
        select(
            m.BillingContact.id,
            m.BillingContact.account_id,
            m.BillingContact.autopay_enabled,
            m.BillingContact.payment_method_id,
        ).where(_of(m.BillingContact.account_id, ids))
    ):
        values = overlay(
            {f: getattr(r, f) for f in CONTACT_FIELDS}, own.get((BILLING_CONTACT, r.id), {})
        )
        contacts[r.account_id][r.id] = ContactView(
            r.id, bool(values["autopay_enabled"]), found_cards.get(values["payment_method_id"])
        )
    clients: dict[str, dict[str, ClientView]] = {a: {} for a in ids}
    which = select(*CLIENT_SETTINGS_COLUMNS).where(_of(m.Client.account_id, ids))
    if listed_on is not None:
        e = m.EligibleSession
        listed = select(e.client_id).where(_of(e.account_id, ids), e.night == listed_on)
        which = which.where(m.Client.id.in_(listed))
    rows = conn.execute(which)
    for c in rows.all():
        values = dict(zip(CLIENT_SETTINGS_KEYS, c, strict=True))  # CLIENT_FIELDS among them
        changed = own.get((CLIENT, c.id))
        if changed:
            values = overlay(values, changed)
        clients[c.account_id][c.id] = ClientView(
            id=c.id,
            account_id=c.account_id,
            billing_contact_id=values["billing_contact_id"],
            auto_bill=bool(values["auto_bill"]),
            superbills_enabled=bool(values["superbills_enabled"]),
            autopay_enabled=bool(values["autopay_enabled"]),
            sharing=_sharing(values),
            card=found_cards.get(values["payment_method_id"]),
        )
    return {a: Practice(accounts[a], clients[a], contacts[a]) for a in ids}


def auto_bill_at(
    conn: Connection, account_ids: Sequence[str], at: datetime
) -> dict[str, tuple[str, bool]]:
    """{client id: (account id, the client's `auto_bill` in force at `at`)} of these
    accounts' clients: what `load_practices(...).clients[id].auto_bill` says, in two queries."""
    ids = list(account_ids)
    if not ids:
        return {}
    changed = {
        key[1]: change.value
        for key, change in _changes_in_force_of(conn, ids, at, CLIENT).items()
        if key[2] == "auto_bill"
    }
    c = m.Client
    rows = conn.execute(select(c.id, c.account_id, c.auto_bill).where(_of(c.account_id, ids)))
    return {cid: (aid, bool(changed.get(cid, auto_bill))) for cid, aid, auto_bill in rows.all()}


def auto_bill_history(
    conn: Connection, account_ids: Sequence[str]
) -> dict[str, tuple[str, bool, list[Change[bool]]]]:
    """{client id: (account id, the client's `auto_bill` as created, its changes in instant
    order)} of these accounts' clients: `auto_bill_at` at every instant, in two queries."""
    ids = list(account_ids)
    if not ids:
        return {}
    query = select(m.SettingChange.__table__).where(
        and_(
            _of(m.SettingChange.account_id, ids),
            m.SettingChange.subject == CLIENT,
            m.SettingChange.field == "auto_bill",
        )
    )
    changes: dict[str, list[Change[bool]]] = {}
    for key, change in _changes(conn.execute(query)):
        changes.setdefault(key[1], []).append(Change(change.at, bool(change.value)))
    for found in changes.values():
        found.sort(key=lambda c: c.at)
    c = m.Client
    rows = conn.execute(select(c.id, c.account_id, c.auto_bill).where(_of(c.account_id, ids)))
    return {cid: (aid, bool(auto_bill), changes.get(cid, [])) for cid, aid, auto_bill in rows.all()}


def change_instants(
    conn: Connection, account_ids: Sequence[str], after: datetime, upto: datetime
) -> dict[str, list[datetime]]:
    """{account id: the instants in (after, upto] from which one of its changes is in force,
    in order}: `accounts_changed_between` for every sub-interval, in one query."""
    if not account_ids:
        return {}
    c = m.SettingChange
    found: dict[str, list[datetime]] = {}
    for account_id, at in conn.execute(
        select(c.account_id, c.effective_at)
        .where(and_(_of(c.account_id, account_ids), c.effective_at > after))
        .where(c.effective_at <= upto)
        .order_by(c.account_id, c.effective_at)
    ):
        found.setdefault(account_id, []).append(at)
    return found


def accounts_changed_between(
    conn: Connection, account_ids: Sequence[str], after: datetime, upto: datetime
) -> set[str]:
    """The accounts with a change in force from an instant in (after, upto]. For the others
    `load_practices(..., upto)` equals `load_practices(..., after)`: the instant reaches the
    practice only through the changes in force (`_changes_in_force_of`)."""
    if not account_ids:
        return set()
    c = m.SettingChange
    return set(
        conn.execute(
            select(c.account_id)
            .where(and_(_of(c.account_id, account_ids), c.effective_at > after))
            .where(c.effective_at <= upto)
            .distinct()
        ).scalars()
    )


def services_from_json(items: Iterable[Mapping[str, Any]]) -> tuple[Service, ...]:
    return tuple(
        Service(
            item.get("cpt") or None,
            int(item.get("units", 1)),
            int(item["fee_cents"]),
            tuple(item.get("modifiers") or ()),
        )
        for item in items
    )


def services_to_json(services: Iterable[Service]) -> list[dict[str, Any]]:
    return [
        {"cpt": s.cpt, "units": s.units, "fee_cents": s.fee_cents, "modifiers": list(s.modifiers)}
        for s in services
    ]


def _services_in_force(
    conn: Connection, session_ids: Sequence[str], at: datetime | None
) -> dict[str, tuple[Service, ...]]:
    """The services changes in force at `at` (None: the latest) of these sessions."""
    found: list[tuple[ChangeKey, Change[Any]]] = []
    for i in range(0, len(session_ids), 500):
        query = select(m.SettingChange.__table__).where(
            and_(
                m.SettingChange.subject == SESSION,
                m.SettingChange.field == SERVICES,
                m.SettingChange.subject_id.in_(list(session_ids[i : i + 500])),
            )
        )
        if at is not None:
            query = query.where(m.SettingChange.effective_at <= at)
        found.extend(_changes(conn.execute(query)))
    return {key[1]: services_from_json(c.value) for key, c in values_at(found, at).items()}


def sessions_with_cpt(
    conn: Connection, session_ids: Sequence[str], at: datetime | None = None
) -> set[str]:
    """Those of these sessions that have a service with a CPT code at `at` (None: now, with
    every change)."""
    ids = list(session_ids)
    services: dict[str, tuple[Service, ...]] = {}
    for i in range(0, len(ids), 500):
        for r in conn.execute(
            select(m.SessionService.session_id, m.SessionService.cpt).where(
                m.SessionService.session_id.in_(ids[i : i + 500])
            )
        ):
            services[r.session_id] = (*services.get(r.session_id, ()), Service(r.cpt, 1, 0))
    services.update(_services_in_force(conn, ids, at))
    return {sid for sid, found in services.items() if any(s.billable for s in found)}


def services_at(
    conn: Connection,
    session_ids: Sequence[str],
    at: datetime | None = None,
    *,
    as_created: bool = False,
) -> dict[str, tuple[Service, ...]]:
    """Each of these sessions' services as in force at instant `at` (None: the latest): the
    session's own rows, unless a `session_services` change in force replaced them.
    `as_created`: the own rows only, whatever the changes (`services_changes` has them)."""
    ids = list(session_ids)
    services: dict[str, list[Service]] = {i: [] for i in ids}
    for chunk_start in range(0, len(ids), 500):
        for s in conn.execute(
            select(m.SessionService.__table__)
            .where(m.SessionService.session_id.in_(ids[chunk_start : chunk_start + 500]))
            .order_by(m.SessionService.session_id, m.SessionService.position)
        ):
            modifiers = tuple(x for x in (s.modifiers or "").split(",") if x)
            services[s.session_id].append(Service(s.cpt, s.units, s.fee_cents, modifiers))
    changed = {} if as_created else _services_in_force(conn, ids, at)
    return {i: changed.get(i, tuple(services[i])) for i in ids}


def services_changes(
    conn: Connection, session_ids: Sequence[str]
) -> dict[str, list[Change[tuple[Service, ...]]]]:
    """Every services change of these sessions (those with none are absent), in instant
    order: with `services_at(..., as_created=True)`, what each instant's services are."""
    ids = list(session_ids)
    found: dict[str, list[Change[tuple[Service, ...]]]] = {}
    for i in range(0, len(ids), 500):
        query = select(m.SettingChange.__table__).where(
            and_(
                m.SettingChange.subject == SESSION,
                m.SettingChange.field == SERVICES,
                m.SettingChange.subject_id.in_(ids[i : i + 500]),
            )
        )
        for key, change in _changes(conn.execute(query)):
            found.setdefault(key[1], []).append(Change(change.at, services_from_json(change.value)))
    for changes in found.values():
        changes.sort(key=lambda c: c.at)
    return found


def load_sessions(
    conn: Connection,
    client_ids: Sequence[str],
    starts_from: datetime,
    starts_before: datetime,
    at: datetime | None = None,
) -> list[Session]:
    """Sessions of these clients starting in [starts_from, starts_before), with the services
    in force at instant `at` (None: the latest)."""
    if not client_ids:
        return []
    srows = conn.execute(
        select(m.SessionRow.__table__)
        .where(
            and_(
                m.SessionRow.client_id.in_(list(client_ids)),
                m.SessionRow.starts_at >= starts_from,
                m.SessionRow.starts_at < starts_before,
            )
        )
        .order_by(m.SessionRow.starts_at, m.SessionRow.id)
    ).all()
    return _with_services(conn, srows, at)


def load_sessions_of_accounts(
    conn: Connection,
    account_ids: Sequence[str],
    starts_from: datetime,
    starts_before: datetime,
    at: datetime | None = None,
    *,
    leave_out_billed_native: bool = False,
    where: Sequence[ColumnElement[bool]] = (),
    as_created: bool = False,
) -> list[Session]:
    """`load_sessions` of every client of these accounts (a join, not a list of clients).
    `leave_out_billed_native`: without the native sessions already on a bill (most of a
    look-back window), which a night neither bills nor flags. `where`: only the sessions
    that meet these conditions too. `as_created`: with their own services rows, whatever
    the changes (`at` unused)."""
    if not account_ids:
        return []
    clients = select(m.Client.id).where(_of(m.Client.account_id, account_ids))
    where = [
        m.SessionRow.client_id.in_(clients),
        m.SessionRow.starts_at >= starts_from,
        m.SessionRow.starts_at < starts_before,
        *where,
    ]
    if leave_out_billed_native:
        billed = select(m.BillSession.session_id).where(m.BillSession.session_id == m.SessionRow.id)
        where.append(or_(~billed.exists(), m.SessionRow.source != SessionSource.NATIVE.value))
    srows = conn.execute(
        select(m.SessionRow.__table__)
        .where(and_(*where))
        .order_by(m.SessionRow.starts_at, m.SessionRow.id)
    ).all()
    return _with_services(conn, srows, at, as_created)


def load_sessions_by_ids(
    conn: Connection, session_ids: Collection[str], at: datetime | None = None
) -> list[Session]:
    """These sessions, with the services in force at instant `at` (None: the latest), in
    order of start."""
    ids = sorted(session_ids)
    srows: list[Row[Any]] = []
    for i in range(0, len(ids), 500):
        srows += conn.execute(
            select(m.SessionRow.__table__).where(m.SessionRow.id.in_(ids[i : i + 500]))
        ).all()
    srows.sort(key=lambda r: (r.starts_at, r.id))
    return _with_services(conn, srows, at)


def _with_services(
    conn: Connection, srows: Sequence[Row[Any]], at: datetime | None, as_created: bool = False
) -> list[Session]:
    if not srows:
        return []
    services = services_at(conn, [r.id for r in srows], at, as_created=as_created)
    return [_session_of(r, services[r.id]) for r in srows]


def _session_of(r: Any, services: tuple[Service, ...]) -> Session:
    """The session of a `sessions` row, with its services."""
    return Session(
        id=r.id,
        client_id=r.client_id,
        starts_at=r.starts_at,
        status=SessionStatus(r.status),
        source=SessionSource(r.source),
        place_of_service=r.place_of_service,
        services=services,
    )


def listed_open_sessions(
    conn: Connection, account_ids: Sequence[str], night: date, at: datetime
) -> dict[str, list[Session]]:
    """{account id: the sessions of its night's `eligible_sessions` rows that are on no bill,
    with the services in force at instant `at`, in order of start}: what
    `load_sessions_by_ids(listed - billed_session_ids(listed), at)` gives, in two statements
    (the rows joined with their sessions and services; the services changes of the listed
    sessions) instead of four chunked reads per 500 sessions."""
    found: dict[str, list[Session]] = {a: [] for a in account_ids}
    if not account_ids:
        return found
    e, s, ss = m.EligibleSession, m.SessionRow, m.SessionService
    listed = and_(e.night == night, _of(e.account_id, account_ids))
    billed = select(m.BillSession.session_id).where(m.BillSession.session_id == e.session_id)
    rows = conn.execute(
        select(
            e.account_id,
            s.id,
            s.client_id,
            s.starts_at,
            s.status,
            s.source,
            s.place_of_service,
            ss.cpt,
            ss.units,
            ss.fee_cents,
            ss.modifiers,
        )
        .select_from(e)
        .join(s, s.id == e.session_id)
        .outerjoin(ss, ss.session_id == s.id)
        .where(and_(listed, ~billed.exists()))
        .order_by(s.starts_at, s.id, ss.position)
    ).all()
    changes = conn.execute(
        select(m.SettingChange.__table__).where(
            and_(
                m.SettingChange.subject == SESSION,
                m.SettingChange.field == SERVICES,
                m.SettingChange.effective_at <= at,
                m.SettingChange.subject_id.in_(select(e.session_id).where(listed)),
            )
        )
    )
    changed = {
        key[1]: services_from_json(c.value) for key, c in values_at(_changes(changes), at).items()
    }
    head: list[tuple[str, Any]] = []  # (account id, the session's row), in order of start
    services: dict[str, list[Service]] = {}
    for r in rows:
        if r.id not in services:
            services[r.id] = []
            head.append((r.account_id, r))
        if r.units is not None:  # a session with no services has one row of NULLs
            modifiers = tuple(x for x in (r.modifiers or "").split(",") if x)
            services[r.id].append(Service(r.cpt, r.units, r.fee_cents, modifiers))
    for account_id, r in head:
        found[account_id].append(_session_of(r, changed.get(r.id, tuple(services[r.id]))))
    return found


def billed_session_ids(conn: Connection, session_ids: Sequence[str]) -> set[str]:
    found: set[str] = set()
    ids = list(session_ids)
    for i in range(0, len(ids), 500):
        found.update(
            conn.execute(
                select(m.BillSession.session_id).where(
                    m.BillSession.session_id.in_(ids[i : i + 500])
                )
            ).scalars()
        )
    return found


# --- Creating records (production and the scenario loader) ----------------------------------


@dataclass(frozen=True)
class NewAccount:
    id: str
    name: str
    timezone: str
    bill_creation: BillCreation
    superbill_day_of_month: int
    autopay_enabled: bool
    defaults: Sharing
    defaults_changes: tuple[DefaultsChange, ...] = ()
    npi: str | None = None
    tax_id: str | None = None
    address: str | None = None
    phone: str | None = None
    provider: Mapping[str, str] | None = None


def create_account(conn: Connection, new: NewAccount) -> list[DefaultsVersion]:
    """Create an account with the full history of its new-client sharing defaults."""
    history = defaults_history(new.defaults, new.defaults_changes)
    provider = dict(new.provider or {})
    conn.execute(
        insert(m.Account).values(
            id=new.id,
            name=new.name,
            timezone=new.timezone,
            npi=new.npi,
            tax_id=new.tax_id,
            address=new.address,
            phone=new.phone,
            provider_name=provider.get("name"),
            provider_credentials=provider.get("credentials"),
            provider_npi=provider.get("npi"),
            provider_license_number=provider.get("license_number"),
            provider_taxonomy=provider.get("taxonomy"),
            bill_creation=new.bill_creation.value,
            superbill_day_of_month=new.superbill_day_of_month,
            autopay_enabled=new.autopay_enabled,
        )
    )
    conn.execute(
        insert(m.AccountSharingDefaults),
        [
            {"account_id": new.id, "effective_at": v.effective_at, **v.sharing.as_dict()}
            for v in history
        ],
    )
    return history


def defaults_history_of(conn: Connection, account_id: str) -> list[DefaultsVersion]:
    rows = conn.execute(
        select(m.AccountSharingDefaults.__table__)
        .where(m.AccountSharingDefaults.account_id == account_id)
        .order_by(m.AccountSharingDefaults.effective_at)
    )
    return [
        DefaultsVersion(r.effective_at, _sharing({f: getattr(r, f) for f in SHARING_FIELDS}))
        for r in rows
    ]


def change_account_defaults(
    conn: Connection, account_id: str, effective_at: datetime, changes: Mapping[str, bool | int]
) -> Sharing:
    """A new version of the defaults from `effective_at`; existing clients keep theirs."""
    history = defaults_history_of(conn, account_id)
    updated = defaults_history(
        history[0].sharing,
        [DefaultsChange(v.effective_at, v.sharing.as_dict()) for v in history[1:]]
        + [DefaultsChange(effective_at, changes)],
    )[-1]
    conn.execute(
        insert(m.AccountSharingDefaults).values(
            account_id=account_id, effective_at=updated.effective_at, **updated.sharing.as_dict()
        )
    )
    return updated.sharing


@dataclass(frozen=True)
class NewCard:
    """A card as Stripe registered it (the number never reaches this database)."""

    id: str
    stripe_customer_id: str
    stripe_payment_method_id: str
    brand: str
    last4: str
    exp_month: int
    exp_year: int
    fingerprint: str | None = None


def create_payment_method(
    conn: Connection,
    account_id: str,
    owner_type: str,
    owner_id: str,
    card: NewCard,
    created_at: datetime,
) -> str:
    conn.execute(
        insert(m.PaymentMethod).values(
            id=card.id,
            account_id=account_id,
            owner_type=owner_type,
            owner_id=owner_id,
            stripe_customer_id=card.stripe_customer_id,
            stripe_payment_method_id=card.stripe_payment_method_id,
            brand=card.brand,
            last4=card.last4,
            exp_month=card.exp_month,
            exp_year=card.exp_year,
            fingerprint=card.fingerprint,
            created_at=created_at,
        )
    )
    return card.id


def create_billing_contact(
    conn: Connection,
    *,
    id: str,
    account_id: str,
    name: str,
    email: str | None,
    autopay_enabled: bool,
    payment_method_id: str | None,
) -> None:
    conn.execute(
        insert(m.BillingContact).values(
            id=id,
            account_id=account_id,
            name=name,
            email=email,
            autopay_enabled=autopay_enabled,
            payment_method_id=payment_method_id,
        )
    )


@dataclass(frozen=True)
class NewClient:
    id: str
    account_id: str
    name: str = field(repr=False)
    created_at: datetime
    own_settings: Mapping[str, bool | int]
    # Personal data stays out of reprs (tracebacks, logs).
    email: str | None = field(default=None, repr=False)
    date_of_birth: date | None = field(default=None, repr=False)
    address: str | None = field(default=None, repr=False)
    insurance_member_id: str | None = field(default=None, repr=False)
    billing_contact_id: str | None = None
    payment_method_id: str | None = None
    diagnoses: tuple[str, ...] = field(default=(), repr=False)


SWITCH_DEFAULTS = {"auto_bill": True, "superbills_enabled": False, "autopay_enabled": False}


def create_client(conn: Connection, new: NewClient) -> Sharing:
    """A new client: switches as given (else their defaults), sharing fields as given, else
    the account's defaults in force at `created_at`. Stored on the client for good."""
    own = dict(new.own_settings)
    switches = {k: bool(own.pop(k, v)) for k, v in SWITCH_DEFAULTS.items()}
    sharing = sharing_for_new_client(defaults_history_of(conn, new.account_id), new.created_at, own)
    conn.execute(
        insert(m.Client).values(
            id=new.id,
            account_id=new.account_id,
            name=new.name,
            email=new.email,
            date_of_birth=new.date_of_birth,
            address=new.address,
            insurance_member_id=new.insurance_member_id,
            created_at=new.created_at,
            billing_contact_id=new.billing_contact_id,
            payment_method_id=new.payment_method_id,
            **switches,
            **sharing.as_dict(),
        )
    )
    if new.diagnoses:
        conn.execute(
            insert(m.Diagnosis),
            [
                {"client_id": new.id, "position": i, "icd10_code": code}
                for i, code in enumerate(new.diagnoses)
            ],
        )
    return sharing


def create_session(conn: Connection, session: Session) -> None:
    conn.execute(
        insert(m.SessionRow).values(
            id=session.id,
            client_id=session.client_id,
            starts_at=session.starts_at,
            status=session.status.value,
            source=session.source.value,
            place_of_service=session.place_of_service,
        )
    )
    if session.services:
        conn.execute(
            insert(m.SessionService),
            [
                {
                    "session_id": session.id,
                    "position": i,
                    "cpt": s.cpt,
                    "units": s.units,
                    "fee_cents": s.fee_cents,
                    "modifiers": ",".join(s.modifiers),
                }
                for i, s in enumerate(session.services)
            ],
        )


def utcnow() -> datetime:
    return datetime.now(UTC)
