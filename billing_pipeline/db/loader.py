"""Loading a scenario file: checked whole, cards registered in Stripe, written in one transaction.

A scenario (../shared/contract/README.md) is refused as a whole when any part of it is wrong:
its shape first (size, nesting depth, integers beyond the INTEGER columns, duplicate keys, NUL
characters: see `strict_json`), then the JSON Schema, then what a schema cannot say (real IANA
zones, instants with an offset, references between records, unique ids, defaults history in
time order, session amounts the INTEGER columns hold). The message names the JSON path of the
first bad field in document order, and never echoes personal data or a card number.

Only then are the cards registered in Stripe (their numbers never reach the database), and
everything is written in one transaction through the same `store` functions production uses:
a new client receives the account's sharing defaults in force at its `created_at`. When the
write fails, the transaction rolls back and the Stripe customers made for it are deleted.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from functools import cache
from hashlib import sha256
from importlib import resources
from pathlib import Path
from typing import Any

import stripe
from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import ValidationError
from sqlalchemy import Connection, Engine, select
from sqlalchemy.exc import DBAPIError

from billing_pipeline.db import models as m
from billing_pipeline.db import store, strict_json
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
from billing_pipeline.resources.payments import Payments, RegisteredCard

# Fields whose values are personal data: a message says they are wrong, never what they hold.
PERSONAL_FIELDS = frozenset(
    {"name", "email", "date_of_birth", "diagnoses", "address", "insurance_member_id", "phone"}
)
# Fields whose values are secrets.
SECRET_FIELDS = frozenset({"card"})
PERSONAL = "(value withheld: personal data)"
SECRET = "(value withheld)"

PathPart = str | int
_CHUNK = 500

# Limits on the shape of a file, checked before anything else.
MAX_BYTES = 50 * 1024 * 1024  # a larger file is refused before it is read
MAX_BYTES_VARIABLE = "BILLING_SCENARIO_MAX_BYTES"  # overrides MAX_BYTES (tests use it)
MAX_DEPTH = 64  # arrays and objects nested deeper (a scenario needs 5 levels)
# Every integer of a scenario goes into an INTEGER column (db/models.py: units, fee_cents,
# delays, card expiry, ...): 32 bits on PostgreSQL. Anything beyond is refused while parsing,
# never by the database.
INT32_MAX = 2**31 - 1
INTEGER_RANGE = (-(2**31), INT32_MAX)


# --- Errors ----------------------------------------------------------------------------------


class ScenarioError(ValueError):
    """A scenario file that cannot be loaded. `str()` is one line: the JSON path of the first
    bad field and what is wrong with it (values of personal fields and cards withheld)."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = " ".join(problem.split())
        super().__init__(f"{path}: {self.problem}" if path else self.problem)


class CardRegistrationError(ScenarioError):
    """Stripe refused a card or did not answer; nothing of the scenario was written."""


def format_path(parts: Sequence[PathPart]) -> str:
    """`["sessions", 3, "services", 0, "cpt"]` -> `sessions[3].services[0].cpt`."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", part):
            out += f".{part}" if out else part
        else:
            out += f"[{json.dumps(part[:40])}]"
    return out or "(document)"


def show(parts: Sequence[PathPart], value: object) -> str:
    """A value as a message may show it: personal data and card numbers are withheld."""
    names = {p for p in parts if isinstance(p, str)}
    if names & PERSONAL_FIELDS:
        return PERSONAL
    if names & SECRET_FIELDS:
        return SECRET
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return repr(value if len(value) <= 80 else value[:77] + "...")
    return json.dumps(value)


@dataclass(frozen=True)
class _Problem:
    parts: tuple[PathPart, ...]
    message: str
    rank: int = 0  # among problems at the same place, the lower rank is reported

    def error(self) -> ScenarioError:
        return ScenarioError(format_path(self.parts), self.message)


def _position(doc: object, parts: Sequence[PathPart]) -> tuple[int, ...]:
    """Where a path is in the document as written: keys in file order, then array indexes.
    A field that is missing sorts after the fields its object has."""
    key: list[int] = []
    node: object = doc
    for part in parts:
        if isinstance(node, dict) and part in node:
            key.append(list(node).index(part))
            node = node[part]
        elif isinstance(node, dict):
            key.append(len(node))
            node = None
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            key.append(part)
            node = node[part]
        else:
            key.append(0)
            node = None
    return tuple(key)


def _first(doc: object, problems: Iterable[_Problem]) -> _Problem | None:
    ordered = sorted(
        enumerate(problems), key=lambda ip: (_position(doc, ip[1].parts), ip[1].rank, ip[0])
    )
    return ordered[0][1] if ordered else None


# --- Reading the file ------------------------------------------------------------------------


def max_bytes() -> int:
    """The largest scenario file read: BILLING_SCENARIO_MAX_BYTES, else MAX_BYTES."""
    raw = os.environ.get(MAX_BYTES_VARIABLE, "").strip()
    if not raw:
        return MAX_BYTES
    try:
        limit = int(raw)
    except ValueError:
        limit = 0
    if limit < 1:
        raise ScenarioError(
            "", f"{MAX_BYTES_VARIABLE}={raw[:40]!r} is not a positive whole number of bytes"
        )
    return limit


def _too_big(size: int | None, limit: int) -> ScenarioError:
    measured = f"is {size:,} bytes, over" if size is not None else "is over"
    return ScenarioError(
        "", f"{measured} the limit of {limit:,} bytes (set {MAX_BYTES_VARIABLE} to change it)"
    )


def read_scenario(path: Path) -> object:
    """The parsed JSON of a scenario file; ScenarioError when it cannot be read or parsed, or
    has a shape a scenario must not have (see `strict_json`): too big, nested too deep,
    integers out of the database's range, duplicate keys, NUL characters."""
    limit = max_bytes()
    try:
        with Path(path).open("rb") as file:
            size = os.fstat(file.fileno()).st_size
            if size > limit:  # refused before reading it
                raise _too_big(size, limit)
            data = file.read(limit + 1)  # the size may be unknown (a pipe) or may have grown
    except FileNotFoundError:
        raise ScenarioError("", "no such file") from None
    except IsADirectoryError:
        raise ScenarioError("", "is a directory, not a scenario file") from None
    except OSError as err:
        raise ScenarioError("", f"cannot be read ({err.strerror or type(err).__name__})") from None
    if len(data) > limit:
        raise _too_big(None, limit)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ScenarioError("", "is not UTF-8 text") from None
    try:
        return strict_json.loads(text, max_depth=MAX_DEPTH, int_range=INTEGER_RANGE)
    except json.JSONDecodeError as err:
        # err.msg describes the syntax only; the document's text is not repeated.
        raise ScenarioError(
            "", f"not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}"
        ) from None
    except strict_json.StrictJSONError as err:
        raise ScenarioError(format_path(err.parts), err.problem) from None


# --- The schema ------------------------------------------------------------------------------

_EMAIL = re.compile(r"[^@\s]+@[^@\s.]+(\.[^@\s.]+)+")


def _is_email(instance: object) -> bool:
    """Stricter than jsonschema's default (which only wants an '@'): a local part, one '@',
    and a domain with a dot; no spaces. Documents are delivered to this address."""
    if not isinstance(instance, str):
        return True
    return _EMAIL.fullmatch(instance) is not None


@cache
def scenario_schema() -> dict[str, Any]:
    """The contract's scenario schema, shipped with the package."""
    text = resources.files("billing_pipeline").joinpath("scenario.schema.json").read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


@cache
def _validator() -> Draft202012Validator:
    checker = FormatChecker(["date-time", "date", "email"])
    checker.checks("email")(_is_email)
    schema = scenario_schema()
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=checker)


_RANK = {
    "type": 0,
    "required": 1,
    "additionalProperties": 2,
    "enum": 3,
    "const": 3,
    "pattern": 4,
    "format": 5,
}


def _instant_problem(value: str) -> str:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return "is not an ISO 8601 date-time with a UTC offset"
    if parsed.tzinfo is None:
        return "has no UTC offset"
    return "is not an ISO 8601 date-time with a UTC offset"


# What a broken JSON Schema rule means, in words (`shown` is the value as quoted back).
RULE_MESSAGES: dict[str, Callable[[str, Any], str]] = {
    "enum": lambda shown, rule: f"{shown} is not one of {', '.join(json.dumps(v) for v in rule)}",
    "const": lambda shown, rule: f"{shown} is not {json.dumps(rule)}",
    "pattern": lambda shown, rule: f"{shown} does not match {rule}",
    "minimum": lambda shown, rule: f"{shown} is less than the minimum of {rule}",
    "maximum": lambda shown, rule: f"{shown} is greater than the maximum of {rule}",
    "exclusiveMinimum": lambda shown, rule: f"{shown} is not greater than {rule}",
    "exclusiveMaximum": lambda shown, rule: f"{shown} is not less than {rule}",
    "minLength": lambda _s, rule: (
        "must not be empty" if rule == 1 else f"is shorter than {rule} characters"
    ),
    "maxLength": lambda _s, rule: f"is longer than {rule} characters",
    "minItems": lambda _s, rule: f"has fewer than {rule} items",
    "maxItems": lambda _s, rule: f"has more than {rule} items",
    "uniqueItems": lambda _s, _rule: "has duplicate items",
}


def _format_problem(rule: str, value: object) -> str:
    if rule == "date-time" and isinstance(value, str):
        return _instant_problem(value)
    return {
        "date": "is not a date (YYYY-MM-DD)",
        "email": "is not an email address",
    }.get(rule, f"is not a valid {rule}")


def _describe(err: ValidationError) -> list[_Problem]:
    """Our own words for a schema error: jsonschema's messages repeat whole values."""
    parts = tuple(err.absolute_path)
    value = err.instance
    shown = show(parts, value)
    rule = err.validator_value
    rank = _RANK.get(str(err.validator), 9)
    kind = err.validator
    if kind == "required" and isinstance(value, dict):
        return [
            _Problem((*parts, name), "required field is missing", rank)
            for name in rule
            if name not in value
        ]
    if kind == "additionalProperties" and isinstance(value, dict):
        allowed = set(err.schema.get("properties", {}))
        return [
            _Problem((*parts, name), "unknown field (not in the scenario schema)", rank)
            for name in value
            if name not in allowed
        ]
    if kind in ("anyOf", "oneOf") and err.context:
        if all(sub.validator == "type" for sub in err.context):
            types = " or ".join(str(sub.validator_value) for sub in err.context)
            return [_Problem(parts, f"{shown} is not of type {types}", rank)]
        deepest = [sub for sub in err.context if sub.validator != "type"]
        return _describe(deepest[0])
    if kind == "type":
        types = " or ".join(rule) if isinstance(rule, list) else str(rule)
        message = f"{shown} is not of type {types}"
    elif kind == "format":
        message = f"{shown} {_format_problem(rule, value)}"
    elif kind in RULE_MESSAGES:
        message = RULE_MESSAGES[kind](shown, rule)
    else:
        message = f"{shown} breaks the schema rule {kind!r}"
    return [_Problem(parts, message, rank)]


def schema_problem(doc: object) -> _Problem | None:
    """The first schema error in document order, if any."""
    problems = [p for err in _validator().iter_errors(doc) for p in _describe(err)]
    return _first(doc, problems)


def check_schema(doc: object) -> None:
    """Raise ScenarioError for the first place, in document order, that breaks the schema."""
    problem = schema_problem(doc)
    if problem is not None:
        raise problem.error()


# --- What is already in the database ---------------------------------------------------------


@dataclass(frozen=True)
class ExistingRecords:
    """Records of the target database that a scenario's ids clash with or refer to."""

    accounts: frozenset[str] = frozenset()
    billing_contacts: Mapping[str, str] = field(default_factory=dict)  # id -> account_id
    clients: Mapping[str, str] = field(default_factory=dict)  # id -> account_id
    sessions: frozenset[str] = frozenset()


def _ids(doc: Mapping[str, Any], kind: str, *keys: str) -> set[str]:
    found: set[str] = set()
    for item in doc.get(kind) or []:
        if isinstance(item, dict):
            found.update(v for k in keys if isinstance(v := item.get(k), str))
    return found


def _chunks(ids: Iterable[str]) -> Iterator[list[str]]:
    ordered = sorted(ids)
    for i in range(0, len(ordered), _CHUNK):
        yield ordered[i : i + _CHUNK]


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
    contact_ids = _ids(doc, "billing_contacts", "id") | _ids(doc, "clients", "billing_contact_id")
    client_ids = _ids(doc, "clients", "id") | _ids(doc, "sessions", "client_id")
    session_ids = _ids(doc, "sessions", "id")

    accounts: set[str] = set()
    contacts: dict[str, str] = {}
    clients: dict[str, str] = {}
    sessions: set[str] = set()
    for chunk in _chunks(account_ids):
        accounts.update(conn.execute(select(m.Account.id).where(m.Account.id.in_(chunk))).scalars())
    for chunk in _chunks(contact_ids):
        rows = conn.execute(
            select(m.BillingContact.id, m.BillingContact.account_id).where(
                m.BillingContact.id.in_(chunk)
            )
        )
        contacts.update({r.id: r.account_id for r in rows})
    for chunk in _chunks(client_ids):
        rows = conn.execute(select(m.Client.id, m.Client.account_id).where(m.Client.id.in_(chunk)))
        clients.update({r.id: r.account_id for r in rows})
    for chunk in _chunks(session_ids):
        sessions.update(
            conn.execute(select(m.SessionRow.id).where(m.SessionRow.id.in_(chunk))).scalars()
        )
    return ExistingRecords(frozenset(accounts), contacts, clients, frozenset(sessions))


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

    @property
    def owner(self) -> tuple[str, str]:
        return (self.owner_type, self.owner_id)


@dataclass(frozen=True)
class Scenario:
    """A scenario that passed every check, as the store's records."""

    accounts: tuple[store.NewAccount, ...]
    billing_contacts: tuple[NewBillingContact, ...]
    clients: tuple[store.NewClient, ...]
    sessions: tuple[Session, ...]
    cards: tuple[CardToRegister, ...]


# Column lengths the schema does not state (PostgreSQL refuses longer values).
_LENGTHS: dict[str, dict[str, int]] = {
    "accounts": {
        "name": m.Account.__table__.c.name.type.length,
        "tax_id": m.Account.__table__.c.tax_id.type.length,
        "phone": m.Account.__table__.c.phone.type.length,
    },
    "provider": {
        "name": m.Account.__table__.c.provider_name.type.length,
        "credentials": m.Account.__table__.c.provider_credentials.type.length,
        "license_number": m.Account.__table__.c.provider_license_number.type.length,
        "taxonomy": m.Account.__table__.c.provider_taxonomy.type.length,
    },
    "billing_contacts": {
        "name": m.BillingContact.__table__.c.name.type.length,
        "email": m.BillingContact.__table__.c.email.type.length,
    },
    "clients": {
        "name": m.Client.__table__.c.name.type.length,
        "email": m.Client.__table__.c.email.type.length,
        "insurance_member_id": m.Client.__table__.c.insurance_member_id.type.length,
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
        self.problems: list[_Problem] = []

    def problem(self, parts: tuple[PathPart, ...], message: str) -> None:
        self.problems.append(_Problem(parts, message))

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
                self.problem((*sparts, "settings_history"), _no_values(str(err)))
                continue
            if item["id"] in ids:
                built.setdefault(item["id"], new)
        return built

    def sharing(self, parts: tuple[PathPart, ...], values: Mapping[str, Any]) -> Sharing | None:
        try:
            return Sharing(**_whole_numbers(values))
        except (InvalidSetting, TypeError) as err:
            self.problem(parts, _no_values(str(err)))
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
        self, parts: tuple[PathPart, ...], item: Mapping[str, Any], owner_type: str
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
                    services=tuple(
                        Service(
                            cpt=service.get("cpt") or None,
                            units=int(service.get("units", 1)),
                            fee_cents=int(service["fee_cents"]),
                            modifiers=tuple(service.get("modifiers") or ()),
                        )
                        for service in item["services"]
                    ),
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


def _whole_numbers(values: Mapping[str, Any]) -> dict[str, Any]:
    """JSON Schema counts 30.0 as an integer; the rules want 30."""
    return {k: int(v) if isinstance(v, float) and v.is_integer() else v for k, v in values.items()}


def _no_values(message: str) -> str:
    """A domain message without any quoted value in it (they are ours, but be safe)."""
    return re.sub(r"\d{12,}", SECRET, message)


def validate_scenario(doc: object, existing: ExistingRecords | None = None) -> Scenario:
    """Check a whole scenario document before anything is written: the JSON Schema, then what
    a schema cannot say. `existing` holds the target database's records among the ids the
    document names (see `existing_records`): ids it already has are refused, and references
    may point at them. Raises ScenarioError for the first problem in document order."""
    check_schema(doc)
    assert isinstance(doc, dict)  # the schema says so
    if doc.get("changes"):
        # The contract's "Changes over time" (effective-dated history) is not built yet: a
        # scenario with changes is refused whole rather than loaded without them.
        raise ScenarioError("changes[0]", "changes over time are not supported by this version yet")
    return _checked(doc, existing or ExistingRecords())


def _checked(doc: Mapping[str, Any], existing: ExistingRecords) -> Scenario:
    """The checks beyond the schema, on a document that passed it."""
    checker = _Checker(doc, existing)
    accounts = checker.accounts()
    known_accounts = {item["id"]: None for item in doc.get("accounts") or []}
    contacts, contact_cards = checker.billing_contacts(known_accounts)
    clients, client_cards = checker.clients(known_accounts)
    known_clients = {item["id"]: None for item in doc.get("clients") or []}
    sessions = checker.sessions(known_clients)
    first = _first(doc, checker.problems)
    if first is not None:
        raise first.error()
    return Scenario(
        accounts=tuple(accounts.values()),
        billing_contacts=tuple(contacts.values()),
        clients=tuple(clients.values()),
        sessions=tuple(sessions),
        cards=tuple(contact_cards + client_cards),
    )


# --- Loading ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadSummary:
    accounts: int
    billing_contacts: int
    clients: int
    sessions: int
    payment_methods: int

    def __str__(self) -> str:
        counts = (
            (self.accounts, "account"),
            (self.billing_contacts, "billing contact"),
            (self.clients, "client"),
            (self.sessions, "session"),
            (self.payment_methods, "payment method"),
        )
        return ", ".join(f"{n} {word}{'' if n == 1 else 's'}" for n, word in counts)


def payment_method_id(owner_type: str, owner_id: str) -> str:
    """Our own id for the card on file of a client or billing contact (at most 64 chars)."""
    plain = f"pm-{owner_type}-{owner_id}"
    if len(plain) <= 64:
        return plain
    return "pm-" + sha256(f"{owner_type}:{owner_id}".encode()).hexdigest()[:48]


def _stripe_words(err: Exception) -> str:
    if isinstance(err, stripe.StripeError):
        code = getattr(err, "code", None)
        words = err.user_message or ""
        detail = ": ".join(x for x in (code, words) if x) or type(err).__name__
        status = getattr(err, "http_status", None)
        if isinstance(err, stripe.CardError | stripe.InvalidRequestError):
            return f"Stripe refused the card ({detail})"
        return f"Stripe failed ({detail}{f', HTTP {status}' if status else ''})"
    return f"Stripe could not be reached ({type(err).__name__})"


def _delete_customers(payments: Payments, registered: Mapping[object, RegisteredCard]) -> None:
    """Best effort: the scenario was not loaded, so its Stripe customers should not stay."""
    for card in registered.values():
        try:
            payments.delete_customer(card.stripe_customer_id)
        except Exception:  # best effort: the original failure is what matters
            continue


def register_cards(
    payments: Payments, cards: Sequence[CardToRegister]
) -> dict[tuple[str, str], RegisteredCard]:
    """Register each card in Stripe. When one fails, the customers already made are deleted
    and CardRegistrationError names the payment method (never the number)."""
    registered: dict[tuple[str, str], RegisteredCard] = {}
    for card in cards:
        try:
            registered[card.owner] = payments.register_card(
                owner_ref=card.owner_id,
                number=card.number,
                exp_month=card.exp_month,
                exp_year=card.exp_year,
            )
        except (stripe.StripeError, OSError) as err:
            _delete_customers(payments, registered)
            raise CardRegistrationError(
                card.path, f"{_no_values(_stripe_words(err))}; nothing was written"
            ) from None
        except BaseException:
            _delete_customers(payments, registered)
            raise
    return registered


def _write(
    conn: Connection,
    scenario: Scenario,
    registered: Mapping[tuple[str, str], RegisteredCard],
) -> None:
    for account in scenario.accounts:
        store.create_account(conn, account)
    pm_ids: dict[tuple[str, str], str] = {}
    now = store.utcnow()
    for card in scenario.cards:
        stripe_card = registered[card.owner]
        pm_ids[card.owner] = store.create_payment_method(
            conn,
            card.account_id,
            card.owner_type,
            card.owner_id,
            store.NewCard(
                id=payment_method_id(card.owner_type, card.owner_id),
                stripe_customer_id=stripe_card.stripe_customer_id,
                stripe_payment_method_id=stripe_card.stripe_payment_method_id,
                brand=stripe_card.brand,
                last4=stripe_card.last4,
                exp_month=stripe_card.exp_month,
                exp_year=stripe_card.exp_year,
            ),
            created_at=now,
        )
    # Contacts before clients: a client points at its billing contact.
    for contact in scenario.billing_contacts:
        store.create_billing_contact(
            conn,
            id=contact.id,
            account_id=contact.account_id,
            name=contact.name,
            email=contact.email,
            autopay_enabled=contact.autopay_enabled,
            payment_method_id=pm_ids.get(("billing_contact", contact.id)),
        )
    for client in scenario.clients:
        store.create_client(
            conn, replace(client, payment_method_id=pm_ids.get(("client", client.id)))
        )
    for session in scenario.sessions:
        store.create_session(conn, session)


def _taken_payment_method_ids(conn: Connection, scenario: Scenario) -> set[str]:
    wanted = {payment_method_id(*card.owner) for card in scenario.cards}
    taken: set[str] = set()
    for chunk in _chunks(wanted):
        taken.update(
            conn.execute(select(m.PaymentMethod.id).where(m.PaymentMethod.id.in_(chunk))).scalars()
        )
    return taken


def load_scenario(path: Path, engine: Engine, payments: Payments) -> LoadSummary:
    """Load a scenario file into the billing database: the whole file is checked first, then
    its cards are registered in Stripe, then everything is written in one transaction. On any
    failure nothing of the file stays, in the database or (best effort) in Stripe.

    Raises ScenarioError (the first bad field, by JSON path), CardRegistrationError (Stripe
    refused a card), or PaymentsNotConfigured (cards to register but no Stripe key).
    """
    doc = read_scenario(path)
    check_schema(doc)
    assert isinstance(doc, dict)  # the schema says so
    with engine.connect() as conn:
        existing = existing_records(conn, doc)
    scenario = _checked(doc, existing)

    registered = register_cards(payments, scenario.cards) if scenario.cards else {}
    try:
        with engine.begin() as conn:
            # Someone may have written since the check: check again inside the transaction.
            _checked(doc, existing_records(conn, doc))
            taken = sorted(_taken_payment_method_ids(conn, scenario))
            if taken:
                raise ScenarioError(
                    "", f"payment method id {taken[0]!r} already exists in the database"
                )
            _write(conn, scenario, registered)
    except DBAPIError as err:
        _delete_customers(payments, registered)
        # The driver's message may quote a failing row (names, emails): never repeat it.
        constraint = getattr(getattr(err.orig, "diag", None), "constraint_name", None)
        detail = type(err.orig).__name__ + (f" on {constraint}" if constraint else "")
        raise ScenarioError(
            "", f"the database refused the write ({detail}); nothing was written"
        ) from None
    except BaseException:
        _delete_customers(payments, registered)
        raise
    return LoadSummary(
        accounts=len(scenario.accounts),
        billing_contacts=len(scenario.billing_contacts),
        clients=len(scenario.clients),
        sessions=len(scenario.sessions),
        payment_methods=len(scenario.cards),
    )
