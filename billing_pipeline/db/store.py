"""Reading and creating practice records through the domain rules.

Every function takes an open SQLAlchemy Connection inside the caller's transaction; none
commits. The scenario loader and production share these.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import Connection, Row, and_, insert, select

from billing_pipeline.db import models as m
from billing_pipeline.domain.practice import AccountView, ClientView, ContactView, Practice
from billing_pipeline.domain.sessions import Service, Session, SessionSource, SessionStatus
from billing_pipeline.domain.settings import (
    BillCreation,
    Card,
    DefaultsChange,
    DefaultsVersion,
    Sharing,
    defaults_history,
    sharing_for_new_client,
)


def _sharing(row: Row[*tuple[Any, ...]]) -> Sharing:
    return Sharing(
        share_bills=bool(row.share_bills),
        bill_delay_minutes=int(row.bill_delay_minutes),
        share_superbills=bool(row.share_superbills),
        superbill_delay_minutes=int(row.superbill_delay_minutes),
        share_statements=bool(row.share_statements),
        statement_delay_minutes=int(row.statement_delay_minutes),
    )


def _account_view(row: Row[*tuple[Any, ...]]) -> AccountView:
    return AccountView(
        id=row.id,
        timezone=row.timezone,
        bill_creation=BillCreation(row.bill_creation),
        superbill_day_of_month=row.superbill_day_of_month,
        autopay_enabled=bool(row.autopay_enabled),
    )


def list_accounts(conn: Connection, account_ids: Iterable[str] | None = None) -> list[AccountView]:
    query = select(m.Account.__table__).order_by(m.Account.id)
    if account_ids is not None:
        query = query.where(m.Account.id.in_(list(account_ids)))
    return [_account_view(r) for r in conn.execute(query)]


def _cards(conn: Connection, account_id: str) -> dict[str, Card]:
    rows = conn.execute(
        select(m.PaymentMethod.__table__).where(m.PaymentMethod.account_id == account_id)
    )
    return {r.id: Card(r.id, r.brand, r.last4, r.exp_month, r.exp_year) for r in rows}


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


def load_practice(conn: Connection, account_id: str) -> Practice:
    account = _account_view(
        conn.execute(select(m.Account.__table__).where(m.Account.id == account_id)).one()
    )
    cards = _cards(conn, account_id)
    contacts = {
        r.id: ContactView(r.id, bool(r.autopay_enabled), cards.get(r.payment_method_id))
        for r in conn.execute(
            select(
                m.BillingContact.id,
                m.BillingContact.autopay_enabled,
                m.BillingContact.payment_method_id,
            ).where(m.BillingContact.account_id == account_id)
        )
    }
    clients = {
        r.id: ClientView(
            id=r.id,
            account_id=r.account_id,
            billing_contact_id=r.billing_contact_id,
            auto_bill=bool(r.auto_bill),
            superbills_enabled=bool(r.superbills_enabled),
            autopay_enabled=bool(r.autopay_enabled),
            sharing=_sharing(r),
            card=cards.get(r.payment_method_id),
        )
        for r in conn.execute(
            select(*CLIENT_SETTINGS_COLUMNS).where(m.Client.account_id == account_id)
        )
    }
    return Practice(account, clients, contacts)


def load_sessions(
    conn: Connection,
    client_ids: Sequence[str],
    starts_from: datetime,
    starts_before: datetime,
) -> list[Session]:
    """Sessions of these clients starting in [starts_from, starts_before), with services."""
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
    return _with_services(conn, srows)


def load_sessions_by_ids(conn: Connection, session_ids: Collection[str]) -> list[Session]:
    """These sessions, with services, in order of start."""
    ids = sorted(session_ids)
    srows: list[Row[Any]] = []
    for i in range(0, len(ids), 500):
        srows += conn.execute(
            select(m.SessionRow.__table__).where(m.SessionRow.id.in_(ids[i : i + 500]))
        ).all()
    srows.sort(key=lambda r: (r.starts_at, r.id))
    return _with_services(conn, srows)


def _with_services(conn: Connection, srows: Sequence[Row[Any]]) -> list[Session]:
    if not srows:
        return []
    services: dict[str, list[Service]] = {r.id: [] for r in srows}
    for chunk_start in range(0, len(srows), 500):
        ids = [r.id for r in srows[chunk_start : chunk_start + 500]]
        for s in conn.execute(
            select(m.SessionService.__table__)
            .where(m.SessionService.session_id.in_(ids))
            .order_by(m.SessionService.session_id, m.SessionService.position)
        ):
            modifiers = tuple(x for x in (s.modifiers or "").split(",") if x)
            services[s.session_id].append(Service(s.cpt, s.units, s.fee_cents, modifiers))
    return [
        Session(
            id=r.id,
            client_id=r.client_id,
            starts_at=r.starts_at,
            status=SessionStatus(r.status),
            source=SessionSource(r.source),
            place_of_service=r.place_of_service,
            services=tuple(services[r.id]),
        )
        for r in srows
    ]


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
    return [DefaultsVersion(r.effective_at, _sharing(r)) for r in rows]


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
