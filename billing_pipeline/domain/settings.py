"""Billing Settings: account defaults, the client's own settings, and who decides what.

Bill creation is the account's alone. Superbills, sharing, delays and AutoPay are the
client's; the account's sharing defaults only seed a new client's settings, with the defaults
in force at the client's creation. AutoPay needs three switches (account, client, billing
contact if any) and a payer card that is not expired in the month of the run.

Every "no" carries a reason code. `describe()` turns it into words for staff (names shortened,
for the CLI only); `log_text()` gives the same reason with ids only, for logs and metadata.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from datetime import UTC, date, datetime
from enum import StrEnum
from typing import Any

from billing_pipeline.domain.calendar import require_aware

SHARING_FIELDS: tuple[str, ...] = (
    "share_bills",
    "bill_delay_minutes",
    "share_superbills",
    "superbill_delay_minutes",
    "share_statements",
    "statement_delay_minutes",
)
MAX_DELAY_MINUTES = 10080
SAFE_BILL_DELAY_MINUTES = 60
BEGINNING_OF_TIME = datetime(1970, 1, 1, tzinfo=UTC)


class BillCreation(StrEnum):
    DAILY = "daily"
    MONTHLY = "monthly"
    MANUAL = "manual"


class DocumentType(StrEnum):
    BILL = "bill"
    SUPERBILL = "superbill"
    STATEMENT = "statement"


class InvalidSetting(ValueError):
    """A setting with a value the rules do not allow; the message names field and value."""


@dataclass(frozen=True)
class Sharing:
    """Whether each kind of document is shared automatically, and after how many minutes."""

    share_bills: bool
    bill_delay_minutes: int
    share_superbills: bool
    superbill_delay_minutes: int
    share_statements: bool
    statement_delay_minutes: int

    def __post_init__(self) -> None:
        # SHARING_FIELDS are this class's fields (checked at import, below): a night builds
        # one Sharing per client, and `fields(self)` cost more than the checks.
        for name in SHARING_FIELDS:
            value = getattr(self, name)
            if name.startswith("share_"):
                if not isinstance(value, bool):
                    raise InvalidSetting(f"{name}: {value!r} is not true or false")
            elif isinstance(value, bool) or not isinstance(value, int):
                raise InvalidSetting(f"{name}: {value!r} is not a whole number of minutes")
            elif not 0 <= value <= MAX_DELAY_MINUTES:
                raise InvalidSetting(f"{name}: {value!r} is not in 0..{MAX_DELAY_MINUTES}")

    def shares(self, kind: DocumentType) -> bool:
        return {
            DocumentType.BILL: self.share_bills,
            DocumentType.SUPERBILL: self.share_superbills,
            DocumentType.STATEMENT: self.share_statements,
        }[kind]

    def delay_minutes(self, kind: DocumentType) -> int:
        return {
            DocumentType.BILL: self.bill_delay_minutes,
            DocumentType.SUPERBILL: self.superbill_delay_minutes,
            DocumentType.STATEMENT: self.statement_delay_minutes,
        }[kind]

    def with_changes(self, changes: Mapping[str, bool | int]) -> Sharing:
        unknown = sorted(set(changes) - set(SHARING_FIELDS))
        if unknown:
            raise InvalidSetting(f"{unknown[0]}: not a sharing setting")
        # Any: each field's kind (true/false for share_*, minutes for delays) is checked at run
        # time by __post_init__, which raises InvalidSetting for a value of the wrong kind.
        checked_by_post_init: dict[str, Any] = dict(changes)
        return replace(self, **checked_by_post_init)

    def as_dict(self) -> dict[str, bool | int]:
        return {name: getattr(self, name) for name in SHARING_FIELDS}


if tuple(f.name for f in fields(Sharing)) != SHARING_FIELDS:  # pragma: no cover
    raise TypeError("Sharing and SHARING_FIELDS name different fields")


@dataclass(frozen=True)
class DefaultsChange:
    """A change of the account's new-client sharing defaults, in force from `effective_at`."""

    effective_at: datetime
    changes: Mapping[str, bool | int]


@dataclass(frozen=True)
class DefaultsVersion:
    effective_at: datetime
    sharing: Sharing


def defaults_history(initial: Sharing, changes: Sequence[DefaultsChange]) -> list[DefaultsVersion]:
    """The full defaults in force from each change on; changes must be in time order."""
    versions = [DefaultsVersion(BEGINNING_OF_TIME, initial)]
    for change in changes:
        at = require_aware(change.effective_at, "effective_at")
        if at <= versions[-1].effective_at:
            raise InvalidSetting(
                f"settings_history: effective_at {change.effective_at.isoformat()!r} is not "
                "after the change before it"
            )
        versions.append(DefaultsVersion(at, versions[-1].sharing.with_changes(change.changes)))
    return versions


def defaults_at(history: Sequence[DefaultsVersion], at: datetime) -> Sharing:
    """The account's new-client defaults in force at instant `at` (a change applies from its
    `effective_at` on, inclusive)."""
    at = require_aware(at, "created_at")
    current = history[0].sharing
    for version in history:
        if version.effective_at <= at:
            current = version.sharing
    return current


def sharing_for_new_client(
    history: Sequence[DefaultsVersion], created_at: datetime, own: Mapping[str, bool | int]
) -> Sharing:
    """A new client's sharing: what the client set, else the defaults in force at creation.

    Later changes of the account's defaults never reach an existing client: the result is
    stored on the client, not looked up again.
    """
    return defaults_at(history, created_at).with_changes(own)


# --- AutoPay --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Card:
    """A card on file: never the number, only what identifies and dates it."""

    payment_method_id: str
    brand: str
    last4: str
    exp_month: int
    exp_year: int
    # Which card this is for AutoPay's count of failures: payer, number (Stripe's
    # fingerprint) and expiry (`card_identity`); the same details re-entered are the same card.
    identity: str | None = None

    @property
    def key(self) -> str:
        return self.identity or f"pm:{self.payment_method_id}"

    def expired_on(self, day: date) -> bool:
        """A card is good through the last day of its expiry month."""
        return (self.exp_year, self.exp_month) < (day.year, day.month)


def card_identity(
    *,
    owner_type: str,
    owner_id: str,
    fingerprint: str | None,
    exp_month: int,
    exp_year: int,
    payment_method_id: str,
) -> str:
    """A card as the contract counts failures: another payer, number or expiry is another
    card; re-entering identical details is the same card. Without Stripe's fingerprint the
    number cannot be compared, and each payment method is a card of its own."""
    number = f"fp:{fingerprint}" if fingerprint else f"pm:{payment_method_id}"
    return f"{owner_type}:{owner_id}|{number}|{exp_month:02d}/{exp_year}"


@dataclass(frozen=True)
class Party:
    """The client or the billing contact as far as AutoPay cares: a switch and a card."""

    kind: str  # "client" | "billing_contact"
    id: str
    autopay_enabled: bool
    card: Card | None


class AutopayReason(StrEnum):
    RUNS = "runs"
    ACCOUNT_OFF = "account_autopay_off"
    CLIENT_OFF = "client_autopay_off"
    CONTACT_OFF = "billing_contact_autopay_off"
    NO_CARD = "no_payment_method"
    CARD_EXPIRED = "payment_method_expired"


@dataclass(frozen=True)
class AutopayDecision:
    runs: bool
    reason: AutopayReason
    payer: Party
    card: Card | None

    @property
    def payer_kind(self) -> str:
        return self.payer.kind

    def log_text(self) -> str:
        """The reason with ids only: safe for logs and Dagster metadata."""
        subject = f"{self.payer.kind} {self.payer.id}"
        return {
            AutopayReason.RUNS: f"AutoPay runs, payer {subject}",
            AutopayReason.ACCOUNT_OFF: "AutoPay is off for the account",
            AutopayReason.CLIENT_OFF: "AutoPay is off for the client",
            AutopayReason.CONTACT_OFF: f"AutoPay is off for {subject}",
            AutopayReason.NO_CARD: f"no payment method on file for {subject}",
            AutopayReason.CARD_EXPIRED: f"the payment method of {subject} has expired",
        }[self.reason]

    def describe(self, payer_name: str | None = None) -> str:
        """The reason in plain words for staff; names appear only here (the CLI's output)."""
        who = {"client": "the client", "billing_contact": "the billing contact"}[self.payer.kind]
        if payer_name:
            who = f"{who} {short_name(payer_name)}"
        card = self.card
        return {
            AutopayReason.RUNS: (
                f"AutoPay will charge {who}"
                + (f" on the {card.brand} card ending {card.last4}" if card else "")
            ),
            AutopayReason.ACCOUNT_OFF: "AutoPay is off for the practice (account setting)",
            AutopayReason.CLIENT_OFF: "AutoPay is off in the client's Billing Settings",
            AutopayReason.CONTACT_OFF: f"AutoPay is off for {who}",
            AutopayReason.NO_CARD: f"{who[0].upper()}{who[1:]} has no card on file",
            AutopayReason.CARD_EXPIRED: (
                f"The card of {who} expired"
                + (
                    f" ({card.brand} ending {card.last4}, {card.exp_month:02d}/{card.exp_year})"
                    if card
                    else ""
                )
            ),
        }[self.reason]


def short_name(name: str) -> str:
    """'Maria Chen' -> 'Maria C.': enough for staff to recognise, less to leak."""
    parts = name.split()
    if len(parts) < 2:
        return name
    return f"{parts[0]} {parts[-1][0]}."


def autopay_decision(
    *,
    account_autopay: bool,
    client: Party,
    billing_contact: Party | None,
    run_date: date,
) -> AutopayDecision:
    """Whether AutoPay may charge for this client on the night whose AutoPay runs on
    `run_date` (local), who pays, and why not when it may not.

    The gates are checked in the order staff think about them: the practice's switch, the
    client's, the billing contact's; then the payer's card.
    """
    payer = billing_contact if billing_contact is not None else client

    def no(reason: AutopayReason) -> AutopayDecision:
        return AutopayDecision(False, reason, payer, payer.card)

    if not account_autopay:
        return no(AutopayReason.ACCOUNT_OFF)
    if not client.autopay_enabled:
        return no(AutopayReason.CLIENT_OFF)
    if billing_contact is not None and not billing_contact.autopay_enabled:
        return no(AutopayReason.CONTACT_OFF)
    if payer.card is None:
        return no(AutopayReason.NO_CARD)
    if payer.card.expired_on(run_date):
        return no(AutopayReason.CARD_EXPIRED)
    return AutopayDecision(True, AutopayReason.RUNS, payer, payer.card)


# --- Advice ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SettingsWarning:
    code: str
    client_id: str
    message: str


def settings_warnings(
    *,
    client_id: str,
    bill_creation: BillCreation,
    account_autopay: bool,
    client_autopay: bool,
    sharing: Sharing,
) -> list[SettingsWarning]:
    """Advice for staff: automatic bills shared less than 60 minutes after creation may reach
    an AutoPay client before AutoPay (00:30) has charged the card."""
    automatic = bill_creation in (BillCreation.DAILY, BillCreation.MONTHLY)
    if (
        automatic
        and account_autopay
        and client_autopay
        and sharing.share_bills
        and sharing.bill_delay_minutes < SAFE_BILL_DELAY_MINUTES
    ):
        return [
            SettingsWarning(
                code="bill_delay_under_60_minutes",
                client_id=client_id,
                message=(
                    f"Bills are created automatically and AutoPay is on, but the bill delivery "
                    f"delay is {sharing.bill_delay_minutes} minutes; set it to at least "
                    f"{SAFE_BILL_DELAY_MINUTES} so AutoPay runs before the bill is shared."
                ),
            )
        ]
    return []
