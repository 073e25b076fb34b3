"""What a schema cannot say about a scenario: real IANA zones, instants with an offset,
references between records (and to records already in the database), unique ids, defaults
history in time order, session amounts the INTEGER columns hold. The result is a `Scenario`
that can be written as it stands.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from hashlib import sha256
from typing import Any, cast

from sqlalchemy import ColumnElement, Connection, String, select

from billing_pipeline.db import models as m
from billing_pipeline.db import store
from billing_pipeline.domain.calendar import UnknownTimezone, zone
from billing_pipeline.domain.sessions import Service, Session, SessionSource, SessionStatus
from billing_pipeline.domain.settings import (
    BEGINNING_OF_TIME,
    BillCreation,
    DefaultsChange,
    InvalidSetting,
    Sharing,
    defaults_history,
)
from billing_pipeline.scenario.read import (
    CHUNK,
    INT32_MAX,
    PERSONAL,
    SECRET,
    PathPart,
    Problem,
    check_schema,
    first_problem,
    format_path,
    show,
)

# --- What is already in the database ---------------------------------------------------------


@dataclass(frozen=True)
class ExistingRecords:
    """Records of the target database that a scenario's ids clash with or refer to."""

    accounts: frozenset[str] = frozenset()
    billing_contacts: Mapping[str, str] = field(default_factory=dict)  # id -> account_id
    clients: Mapping[str, str] = field(default_factory=dict)  # id -> account_id
    sessions: frozenset[str] = frozenset()
    # For `changes[]`: when each client was created, whose each session is, and the changes
    # the database holds of the records the file changes (subject, id, field, instant).
    client_created: Mapping[str, datetime] = field(default_factory=dict)
    session_clients: Mapping[str, str] = field(default_factory=dict)
    change_keys: frozenset[tuple[str, str, str, datetime]] = frozenset()


def _ids(doc: Mapping[str, Any], kind: str, *keys: str) -> set[str]:
    found: set[str] = set()
    for item in doc.get(kind) or []:
        if isinstance(item, dict):
            found.update(v for k in keys if isinstance(v := item.get(k), str))
    return found


def chunks(ids: Iterable[str]) -> Iterator[list[str]]:
    ordered = sorted(ids)
    for i in range(0, len(ordered), CHUNK):
        yield ordered[i : i + CHUNK]


def existing_records(conn: Connection, doc: object) -> ExistingRecords:
    """The records the database already holds among the ids a scenario names (its own and
    those it refers to)."""
    if not isinstance(doc, dict):
        return ExistingRecords()
    account_ids = (
        _ids(doc, "accounts", "id")
        | _ids(doc, "billing_contacts", "account_id")
        | _ids(doc, "clients", "account_id")
    )
    contact_ids = (
        _ids(doc, "billing_contacts", "id")
        | _ids(doc, "clients", "billing_contact_id")
        | _ids(doc, "changes", "billing_contact_id")
    )
    client_ids = (
        _ids(doc, "clients", "id")
        | _ids(doc, "sessions", "client_id")
        | _ids(doc, "changes", "client_id")
    )
    session_ids = _ids(doc, "sessions", "id") | _ids(doc, "changes", "session_id")
    account_ids |= _ids(doc, "changes", "account_id")

    accounts: set[str] = set()
    contacts: dict[str, str] = {}
    clients: dict[str, str] = {}
    created: dict[str, datetime] = {}
    session_clients: dict[str, str] = {}
    for chunk in chunks(session_ids):
        rows = conn.execute(
            select(m.SessionRow.id, m.SessionRow.client_id).where(m.SessionRow.id.in_(chunk))
        )
        session_clients.update({r.id: r.client_id for r in rows})
    client_ids |= set(session_clients.values())
    for chunk in chunks(account_ids):
        accounts.update(conn.execute(select(m.Account.id).where(m.Account.id.in_(chunk))).scalars())
    for chunk in chunks(contact_ids):
        rows = conn.execute(
            select(m.BillingContact.id, m.BillingContact.account_id).where(
                m.BillingContact.id.in_(chunk)
            )
        )
        contacts.update({r.id: r.account_id for r in rows})
    for chunk in chunks(client_ids):
        rows = conn.execute(
            select(m.Client.id, m.Client.account_id, m.Client.created_at).where(
                m.Client.id.in_(chunk)
            )
        )
        for r in rows:
            clients[r.id] = r.account_id
            created[r.id] = r.created_at
    changed = (
        _ids(doc, "changes", "client_id", "account_id", "billing_contact_id", "session_id")
        if doc.get("changes")
        else set()
    )
    keys: set[tuple[str, str, str, datetime]] = set()
    for chunk in chunks(changed):
        rows = conn.execute(
            select(
                m.SettingChange.subject,
                m.SettingChange.subject_id,
                m.SettingChange.field,
                m.SettingChange.effective_at,
            ).where(m.SettingChange.subject_id.in_(chunk))
        )
        keys.update((r.subject, r.subject_id, r.field, r.effective_at) for r in rows)
    return ExistingRecords(
        frozenset(accounts),
        contacts,
        clients,
        frozenset(session_clients),
        created,
        session_clients,
        frozenset(keys),
    )


# --- The checked scenario --------------------------------------------------------------------


@dataclass(frozen=True)
class NewBillingContact:
    id: str
    account_id: str
    name: str = field(repr=False)
    email: str | None = field(repr=False)
    autopay_enabled: bool


@dataclass(frozen=True)
class CardToRegister:
    """A payment method of the scenario, before Stripe has it. The number is never shown."""

    path: str
    owner_type: str  # "client" | "billing_contact"
    owner_id: str
    account_id: str
    number: str = field(repr=False)
    exp_month: int
    exp_year: int
    pm_id: str = ""  # our id for it (`payment_method_id`)
    since: datetime | None = None  # a card that a change puts on file from this instant

    @property
    def owner(self) -> tuple[str, str]:
        return (self.owner_type, self.owner_id)

    @property
    def id(self) -> str:
        return self.pm_id or payment_method_id(self.owner_type, self.owner_id, self.since)


def payment_method_id(owner_type: str, owner_id: str, since: datetime | None = None) -> str:
    """Our own id for a card on file of a client or billing contact (at most 64 chars): the
    card it was created with, or the card a change put on file from instant `since`."""
    plain = f"pm-{owner_type}-{owner_id}"
    if since is not None:
        plain += f"-{since.astimezone(UTC):%Y%m%dT%H%M%SZ}"
    if len(plain) <= 64:
        return plain
    return "pm-" + sha256(plain.encode()).hexdigest()[:48]


@dataclass(frozen=True)
class Scenario:
    """A scenario that passed every check, as the store's records."""

    accounts: tuple[store.NewAccount, ...]
    billing_contacts: tuple[NewBillingContact, ...]
    clients: tuple[store.NewClient, ...]
    sessions: tuple[Session, ...]
    cards: tuple[CardToRegister, ...]
    changes: tuple[store.NewChange, ...] = ()


def _length(column: ColumnElement[Any]) -> int:
    # cast: SQLAlchemy types a column's type as any TypeEngine; each column below is a
    # String(n) in db/models.py, whose n is set.
    length = cast(String, column.type).length
    assert length is not None, column
    return length


# Column lengths the schema does not state (PostgreSQL refuses longer values).
_LENGTHS: dict[str, dict[str, int]] = {
    "accounts": {
        "name": _length(m.Account.__table__.c.name),
        "tax_id": _length(m.Account.__table__.c.tax_id),
        "phone": _length(m.Account.__table__.c.phone),
    },
    "provider": {
        "name": _length(m.Account.__table__.c.provider_name),
        "credentials": _length(m.Account.__table__.c.provider_credentials),
        "license_number": _length(m.Account.__table__.c.provider_license_number),
        "taxonomy": _length(m.Account.__table__.c.provider_taxonomy),
    },
    "billing_contacts": {
        "name": _length(m.BillingContact.__table__.c.name),
        "email": _length(m.BillingContact.__table__.c.email),
    },
    "clients": {
        "name": _length(m.Client.__table__.c.name),
        "email": _length(m.Client.__table__.c.email),
        "insurance_member_id": _length(m.Client.__table__.c.insurance_member_id),
    },
}
_KIND_WORDS = {
    "accounts": "account",
    "billing_contacts": "billing contact",
    "clients": "client",
    "sessions": "session",
}


class _Checker:
    """The checks a schema cannot express, on a document that passed the schema."""

    def __init__(self, doc: Mapping[str, Any], existing: ExistingRecords) -> None:
        self.doc = doc
        self.existing = existing
        self.problems: list[Problem] = []

    def problem(self, parts: tuple[PathPart, ...], message: str) -> None:
        self.problems.append(Problem(parts, message))

    def items(self, kind: str) -> list[tuple[tuple[PathPart, ...], dict[str, Any]]]:
        return [((kind, i), item) for i, item in enumerate(self.doc.get(kind) or [])]

    def lengths(self, parts: tuple[PathPart, ...], item: Mapping[str, Any], table: str) -> None:
        for name, limit in _LENGTHS[table].items():
            value = item.get(name)
            if isinstance(value, str) and len(value) > limit:
                self.problem((*parts, name), f"is longer than {limit} characters")

    def unique_ids(self, kind: str, in_db: Iterable[str] | Mapping[str, str]) -> set[str]:
        """Ids of this kind in the file; a second use of an id, or one the database already
        holds, is a problem."""
        seen: dict[str, tuple[PathPart, ...]] = {}
        taken = set(in_db)
        for parts, item in self.items(kind):
            ident = item["id"]
            if ident in seen:
                first = format_path((*seen[ident], "id"))
                self.problem((*parts, "id"), f"duplicate id {ident!r} (also at {first})")
                continue
            seen[ident] = parts
            if ident in taken:
                self.problem(
                    (*parts, "id"),
                    f"{_KIND_WORDS[kind]} {ident!r} already exists in the database",
                )
        return set(seen)

    def instant(self, parts: tuple[PathPart, ...], value: str) -> datetime | None:
        text = value.strip()
        text = text[:10] + "T" + text[11:] if len(text) > 10 and text[10] in "tT " else text
        if text[-1:] in ("z", "Z"):
            text = text[:-1] + "+00:00"
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            self.problem(parts, f"{show(parts, value)} is not an ISO 8601 date-time")
            return None
        if parsed.tzinfo is None or parsed.utcoffset() is None:
            self.problem(parts, f"{show(parts, value)} has no UTC offset")
            return None
        return parsed.astimezone(UTC)

    # --- each kind ---------------------------------------------------------------------------

    def accounts(self) -> dict[str, store.NewAccount]:
        ids = self.unique_ids("accounts", self.existing.accounts)
        built: dict[str, store.NewAccount] = {}
        for parts, item in self.items("accounts"):
            self.lengths(parts, item, "accounts")
            provider = item.get("provider")
            if provider is not None:
                self.lengths((*parts, "provider"), provider, "provider")
            try:
                zone(item["timezone"])
            except UnknownTimezone:
                self.problem(
                    (*parts, "timezone"),
                    f"{show((), item['timezone'])} is not an IANA timezone",
                )
            settings = item["settings"]
            sparts = (*parts, "settings")
            defaults = self.sharing(
                (*sparts, "new_client_defaults"), settings["new_client_defaults"]
            )
            changes = self.history((*sparts, "settings_history"), settings)
            if defaults is None or changes is None:
                continue
            new = store.NewAccount(
                id=item["id"],
                name=item["name"],
                timezone=item["timezone"],
                bill_creation=BillCreation(settings["bill_creation"]),
                superbill_day_of_month=int(settings["superbill_day_of_month"]),
                autopay_enabled=bool(settings["autopay_enabled"]),
                defaults=defaults,
                defaults_changes=changes,
                npi=item.get("npi"),
                tax_id=item.get("tax_id"),
                address=item.get("address"),
                phone=item.get("phone"),
                provider=dict(provider) if provider is not None else None,
            )
            try:
                defaults_history(new.defaults, new.defaults_changes)
            except (InvalidSetting, ValueError) as err:
                self.problem((*sparts, "settings_history"), no_values(str(err)))
                continue
            if item["id"] in ids:
                built.setdefault(item["id"], new)
        return built

    def sharing(self, parts: tuple[PathPart, ...], values: Mapping[str, Any]) -> Sharing | None:
        try:
            return Sharing(**_whole_numbers(values))
        except (InvalidSetting, TypeError) as err:
            self.problem(parts, no_values(str(err)))
            return None

    def history(
        self, parts: tuple[PathPart, ...], settings: Mapping[str, Any]
    ) -> tuple[DefaultsChange, ...] | None:
        changes: list[DefaultsChange] = []
        previous: tuple[datetime, str] = (BEGINNING_OF_TIME, "1970-01-01T00:00:00Z")
        ok = True
        for i, change in enumerate(settings.get("settings_history") or []):
            at_parts = (*parts, i, "effective_at")
            at = self.instant(at_parts, change["effective_at"])
            if at is None:
                ok = False
                continue
            if at <= previous[0]:
                self.problem(
                    at_parts,
                    f"{change['effective_at']!r} is not after the change before it "
                    f"({previous[1]!r}): settings_history must be in time order",
                )
                ok = False
            previous = (at, change["effective_at"])
            changes.append(DefaultsChange(at, _whole_numbers(change["new_client_defaults"])))
        return tuple(changes) if ok else None

    def account_ref(
        self, parts: tuple[PathPart, ...], account_id: str, accounts: Mapping[str, object]
    ) -> bool:
        if account_id in accounts or account_id in self.existing.accounts:
            return True
        self.problem(parts, f"unknown account {account_id!r}")
        return False

    def billing_contacts(
        self, accounts: Mapping[str, object]
    ) -> tuple[dict[str, NewBillingContact], list[CardToRegister]]:
        ids = self.unique_ids("billing_contacts", self.existing.billing_contacts)
        built: dict[str, NewBillingContact] = {}
        cards: list[CardToRegister] = []
        for parts, item in self.items("billing_contacts"):
            self.lengths(parts, item, "billing_contacts")
            if not self.account_ref((*parts, "account_id"), item["account_id"], accounts):
                continue
            contact = NewBillingContact(
                id=item["id"],
                account_id=item["account_id"],
                name=item["name"],
                email=item.get("email"),
                autopay_enabled=bool(item["autopay_enabled"]),
            )
            if item["id"] in ids and item["id"] not in built:
                built[item["id"]] = contact
                card = self.card(parts, item, "billing_contact")
                if card is not None:
                    cards.append(card)
        return built, cards

    def card(
        self,
        parts: tuple[PathPart, ...],
        item: Mapping[str, Any],
        owner_type: str,
        since: datetime | None = None,
    ) -> CardToRegister | None:
        pm = item.get("payment_method")
        if pm is None:
            return None
        return CardToRegister(
            path=format_path((*parts, "payment_method")),
            owner_type=owner_type,
            owner_id=item["id"],
            account_id=item["account_id"],
            number=pm["card"],
            exp_month=int(pm["exp_month"]),
            exp_year=int(pm["exp_year"]),
            pm_id=payment_method_id(owner_type, item["id"], since),
            since=since,
        )

    def clients(
        self, accounts: Mapping[str, object]
    ) -> tuple[dict[str, store.NewClient], list[CardToRegister]]:
        ids = self.unique_ids("clients", self.existing.clients)
        built: dict[str, store.NewClient] = {}
        cards: list[CardToRegister] = []
        file_contacts = {
            item["id"]: item["account_id"] for _, item in self.items("billing_contacts")
        }
        for parts, item in self.items("clients"):
            self.lengths(parts, item, "clients")
            ok = self.account_ref((*parts, "account_id"), item["account_id"], accounts)
            created_at = self.instant((*parts, "created_at"), item["created_at"])
            contact_id = item.get("billing_contact_id")
            if contact_id is not None:
                owner = file_contacts.get(
                    contact_id, self.existing.billing_contacts.get(contact_id)
                )
                if owner is None:
                    self.problem(
                        (*parts, "billing_contact_id"), f"unknown billing contact {contact_id!r}"
                    )
                    ok = False
                elif owner != item["account_id"]:
                    self.problem(
                        (*parts, "billing_contact_id"),
                        f"billing contact {contact_id!r} belongs to account {owner!r}, "
                        f"not {item['account_id']!r}",
                    )
                    ok = False
            birth = self.birth_date((*parts, "date_of_birth"), item.get("date_of_birth"))
            own = _whole_numbers(item.get("settings") or {})
            if not ok or created_at is None or item["id"] not in ids or item["id"] in built:
                continue
            built[item["id"]] = store.NewClient(
                id=item["id"],
                account_id=item["account_id"],
                name=item["name"],
                created_at=created_at,
                own_settings=own,
                email=item.get("email"),
                date_of_birth=birth,
                address=item.get("address"),
                insurance_member_id=item.get("insurance_member_id"),
                billing_contact_id=contact_id,
                diagnoses=tuple(item.get("diagnoses") or ()),
            )
            card = self.card(parts, item, "client")
            if card is not None:
                cards.append(card)
        return built, cards

    def birth_date(self, parts: tuple[PathPart, ...], value: str | None) -> date | None:
        if value is None:
            return None
        try:
            return date.fromisoformat(value)
        except ValueError:
            self.problem(parts, f"{PERSONAL} is not a date (YYYY-MM-DD)")
            return None

    def sessions(self, clients: Mapping[str, object]) -> list[Session]:
        ids = self.unique_ids("sessions", self.existing.sessions)
        built: list[Session] = []
        done: set[str] = set()
        for parts, item in self.items("sessions"):
            client_id = item["client_id"]
            ok = client_id in clients or client_id in self.existing.clients
            if not ok:
                self.problem((*parts, "client_id"), f"unknown client {client_id!r}")
            starts_at = self.instant((*parts, "starts_at"), item["starts_at"])
            ok = self.amount(parts, item["services"]) and ok
            if not ok or starts_at is None or item["id"] not in ids or item["id"] in done:
                continue
            done.add(item["id"])
            built.append(
                Session(
                    id=item["id"],
                    client_id=client_id,
                    starts_at=starts_at,
                    status=SessionStatus(item.get("status") or SessionStatus.ATTENDED.value),
                    source=SessionSource(item.get("source") or SessionSource.NATIVE.value),
                    place_of_service=item.get("place_of_service"),
                    services=_services(item["services"]),
                )
            )
        return built

    def amount(self, parts: tuple[PathPart, ...], services: Sequence[Mapping[str, Any]]) -> bool:
        """A session's amount (units times fee, summed) is stored in 32-bit INTEGER columns
        (eligible sessions, bill lines): one that cannot be is refused here, not by PostgreSQL
        on the night it is billed."""
        total = 0
        for j, service in enumerate(services):
            total += int(service.get("units", 1)) * int(service["fee_cents"])
            if total > INT32_MAX:
                self.problem(
                    (*parts, "services", j),
                    f"the session's amount reaches {total:,} cents, more than the database "
                    f"holds ({INT32_MAX:,})",
                )
                return False
        return True

    # --- changes over time -----------------------------------------------------------------

    def changes(
        self, clients: Mapping[str, tuple[str, datetime | None]]
    ) -> tuple[list[store.NewChange], list[CardToRegister]]:
        """`changes[]` as history rows (and the cards they put on file). Refused: unknown ids,
        a change dated before its client's `created_at`, two changes of one field of one
        record at one instant (in the file, or one in the file and one in the database)."""
        accounts = set(_ids(self.doc, "accounts", "id")) | set(self.existing.accounts)
        contacts = {item["id"]: item["account_id"] for _, item in self.items("billing_contacts")}
        contacts = {**self.existing.billing_contacts, **contacts}
        session_clients = {item["id"]: item["client_id"] for _, item in self.items("sessions")}
        session_clients = {**self.existing.session_clients, **session_clients}
        seen: dict[tuple[str, str, str, datetime], tuple[PathPart, ...]] = {}
        built: list[store.NewChange] = []
        cards: list[CardToRegister] = []
        for parts, item in self.items("changes"):
            at = self.instant((*parts, "at"), item["at"])
            kind = item["kind"]
            # (subject, id, account, client whose created_at bounds it, [(field, value, path)])
            target = self.change_target(parts, item, accounts, contacts, clients, session_clients)
            if target is None or at is None:
                continue
            subject, subject_id, account_id, client_id = target
            if client_id is not None:
                created = clients.get(client_id, ("", None))[1]
                if created is not None and at < created:
                    self.problem(
                        (*parts, "at"),
                        f"{show((), item['at'])} is before client {client_id!r} was created "
                        f"({created.isoformat()})",
                    )
                    continue
            fields: list[tuple[str, Any, tuple[PathPart, ...]]] = []
            if kind in ("client_settings", "account_settings"):
                for name, value in _whole_numbers(item["settings"]).items():
                    fields.append((name, value, (*parts, "settings", name)))
            elif kind == "billing_contact":
                fields.append(
                    (
                        "billing_contact_id",
                        item["billing_contact_id"],
                        (*parts, "billing_contact_id"),
                    )
                )
            elif kind == "billing_contact_settings":
                fields.append(
                    ("autopay_enabled", item["autopay_enabled"], (*parts, "autopay_enabled"))
                )
            elif kind == "payment_method":
                card = None
                if item["payment_method"] is not None:
                    card = self.card(
                        parts,
                        {**item, "id": subject_id, "account_id": account_id},
                        subject,
                        since=at,
                    )
                fields.append(
                    ("payment_method_id", card.id if card else None, (*parts, "payment_method"))
                )
                if card is not None:
                    cards.append(card)
            elif kind == "session_services":
                if not self.amount(parts, item["services"]):
                    continue
                services = store.services_to_json(_services(item["services"]))
                fields.append((store.SERVICES, services, (*parts, "services")))
            for name, value, fparts in fields:
                key = (subject, subject_id, name, at)
                if key in seen:
                    self.problem(
                        fparts,
                        f"a second change of {name} of {subject.replace('_', ' ')} "
                        f"{subject_id!r} at the same instant (also at {format_path(seen[key])})",
                    )
                    continue
                seen[key] = fparts
                if key in self.existing.change_keys:
                    self.problem(
                        fparts,
                        f"{name} of {subject.replace('_', ' ')} {subject_id!r} already has a "
                        "change at that instant in the database",
                    )
                    continue
                built.append(store.NewChange(account_id, subject, subject_id, name, value, at))
        return built, cards

    def change_target(
        self,
        parts: tuple[PathPart, ...],
        item: Mapping[str, Any],
        accounts: set[str],
        contacts: Mapping[str, str],
        clients: Mapping[str, tuple[str, datetime | None]],
        session_clients: Mapping[str, str],
    ) -> tuple[str, str, str, str | None] | None:
        """What a change changes: (subject, its id, its account, the client it belongs to)."""
        kind = item["kind"]
        if kind == "account_settings":
            if item["account_id"] not in accounts:
                self.problem((*parts, "account_id"), f"unknown account {item['account_id']!r}")
                return None
            return (store.ACCOUNT, item["account_id"], item["account_id"], None)
        if kind == "billing_contact_settings" or (
            kind == "payment_method" and "billing_contact_id" in item
        ):
            contact_id = item["billing_contact_id"]
            if contact_id not in contacts:
                self.problem(
                    (*parts, "billing_contact_id"), f"unknown billing contact {contact_id!r}"
                )
                return None
            return (store.BILLING_CONTACT, contact_id, contacts[contact_id], None)
        if kind == "session_services":
            session_id = item["session_id"]
            owner = session_clients.get(session_id)
            if owner is None or owner not in clients:
                self.problem((*parts, "session_id"), f"unknown session {session_id!r}")
                return None
            return (store.SESSION, session_id, clients[owner][0], owner)
        client_id = item["client_id"]
        if client_id not in clients:
            self.problem((*parts, "client_id"), f"unknown client {client_id!r}")
            return None
        account_id = clients[client_id][0]
        if kind == "billing_contact" and item["billing_contact_id"] is not None:
            contact_id = item["billing_contact_id"]
            owner = contacts.get(contact_id)
            if owner is None:
                self.problem(
                    (*parts, "billing_contact_id"), f"unknown billing contact {contact_id!r}"
                )
                return None
            if owner != account_id:
                self.problem(
                    (*parts, "billing_contact_id"),
                    f"billing contact {contact_id!r} belongs to account {owner!r}, "
                    f"not {account_id!r}",
                )
                return None
        return (store.CLIENT, client_id, account_id, client_id)


def _services(items: Sequence[Mapping[str, Any]]) -> tuple[Service, ...]:
    return tuple(
        Service(
            cpt=service.get("cpt") or None,
            units=int(service.get("units", 1)),
            fee_cents=int(service["fee_cents"]),
            modifiers=tuple(service.get("modifiers") or ()),
        )
        for service in items
    )


def _whole_numbers(values: Mapping[str, Any]) -> dict[str, Any]:
    """JSON Schema counts 30.0 as an integer; the rules want 30."""
    return {k: int(v) if isinstance(v, float) and v.is_integer() else v for k, v in values.items()}


def no_values(message: str) -> str:
    """A domain message without any quoted value in it (they are ours, but be safe)."""
    return re.sub(r"\d{12,}", SECRET, message)


def validate_scenario(doc: object, existing: ExistingRecords | None = None) -> Scenario:
    """Check a whole scenario document before anything is written: the JSON Schema, then what
    a schema cannot say. `existing` holds the target database's records among the ids the
    document names (see `existing_records`): ids it already has are refused, and references
    may point at them. Raises ScenarioError for the first problem in document order."""
    check_schema(doc)
    assert isinstance(doc, dict)  # the schema says so
    return checked_scenario(doc, existing or ExistingRecords())


def checked_scenario(doc: Mapping[str, Any], existing: ExistingRecords) -> Scenario:
    """The checks beyond the schema, on a document that passed it."""
    checker = _Checker(doc, existing)
    accounts = checker.accounts()
    known_accounts = {item["id"]: None for item in doc.get("accounts") or []}
    contacts, contact_cards = checker.billing_contacts(known_accounts)
    clients, client_cards = checker.clients(known_accounts)
    known_clients = {item["id"]: None for item in doc.get("clients") or []}
    sessions = checker.sessions(known_clients)
    # Clients a change may name: the file's (as built: created_at checked) and the database's.
    change_clients: dict[str, tuple[str, datetime | None]] = {
        cid: (account, existing.client_created.get(cid))
        for cid, account in existing.clients.items()
    }
    change_clients.update({c.id: (c.account_id, c.created_at) for c in clients.values()})
    changes, change_cards = checker.changes(change_clients)
    first = first_problem(doc, checker.problems)
    if first is not None:
        raise first.error()
    return Scenario(
        accounts=tuple(accounts.values()),
        billing_contacts=tuple(contacts.values()),
        clients=tuple(clients.values()),
        sessions=tuple(sessions),
        cards=tuple(contact_cards + client_cards + change_cards),
        changes=tuple(changes),
    )
