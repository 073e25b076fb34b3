"""Loading a checked scenario: cards registered in Stripe, everything written in one transaction.

The cards are registered in Stripe first (their numbers never reach the database), then
everything is written in one transaction through the same `db.store` functions production uses:
a new client receives the account's sharing defaults in force at its `created_at`. When the
write fails, the transaction rolls back and the Stripe customers made for it are deleted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

import stripe
from sqlalchemy import Connection, Engine, select
from sqlalchemy.exc import DBAPIError

from billing_pipeline.db import models as m
from billing_pipeline.db import store
from billing_pipeline.resources.payments import Payments, RegisteredCard
from billing_pipeline.scenario.read import (
    CardRegistrationError,
    ScenarioError,
    check_schema,
    read_scenario,
)
from billing_pipeline.scenario.validate import (
    CardToRegister,
    Scenario,
    checked_scenario,
    chunks,
    existing_records,
    no_values,
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


def _delete_customers(payments: Payments, registered: Sequence[RegisteredCard]) -> None:
    """Best effort: the scenario was not loaded, so its Stripe customers should not stay."""
    for card in registered:
        try:
            payments.delete_customer(card.stripe_customer_id)
        except Exception:  # best effort: the original failure is what matters
            continue


def register_cards(payments: Payments, cards: Sequence[CardToRegister]) -> list[RegisteredCard]:
    """Register each card in Stripe (in the order given: an owner may have several over
    time). When one fails, the customers already made are deleted and CardRegistrationError
    names the payment method (never the number)."""
    registered: list[RegisteredCard] = []
    for card in cards:
        try:
            registered.append(
                payments.register_card(
                    owner_ref=card.owner_id,
                    number=card.number,
                    exp_month=card.exp_month,
                    exp_year=card.exp_year,
                )
            )
        except (stripe.StripeError, OSError) as err:
            _delete_customers(payments, registered)
            raise CardRegistrationError(
                card.path, f"{no_values(_stripe_words(err))}; nothing was written"
            ) from None
        except BaseException:
            _delete_customers(payments, registered)
            raise
    return registered


def _write(
    conn: Connection,
    scenario: Scenario,
    registered: Sequence[RegisteredCard],
) -> None:
    for account in scenario.accounts:
        store.create_account(conn, account)
    now = store.utcnow()
    write_cards(conn, scenario.cards, registered, now)
    # The cards each owner started with (a change's card is on file from its instant only).
    pm_ids = {card.owner: card.id for card in scenario.cards if card.since is None}
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
    store.record_changes(conn, scenario.changes, now)


def write_cards(
    conn: Connection,
    cards: Sequence[CardToRegister],
    registered: Sequence[RegisteredCard],
    now: datetime,
) -> None:
    """The payment method rows of cards Stripe registered, in the same order (no number:
    Stripe's ids, brand, last 4, expiry, fingerprint)."""
    for card, stripe_card in zip(cards, registered, strict=True):
        store.create_payment_method(
            conn,
            card.account_id,
            card.owner_type,
            card.owner_id,
            store.NewCard(
                id=card.id,
                stripe_customer_id=stripe_card.stripe_customer_id,
                stripe_payment_method_id=stripe_card.stripe_payment_method_id,
                brand=stripe_card.brand,
                last4=stripe_card.last4,
                exp_month=stripe_card.exp_month,
                exp_year=stripe_card.exp_year,
                fingerprint=stripe_card.fingerprint,
            ),
            created_at=now,
        )


def taken_payment_method_ids(conn: Connection, cards: Sequence[CardToRegister]) -> set[str]:
    wanted = {card.id for card in cards}
    taken: set[str] = set()
    for chunk in chunks(wanted):
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
    scenario = checked_scenario(doc, existing)

    registered = register_cards(payments, scenario.cards) if scenario.cards else []
    try:
        with engine.begin() as conn:
            # Someone may have written since the check: check again inside the transaction.
            checked_scenario(doc, existing_records(conn, doc))
            taken = sorted(taken_payment_method_ids(conn, scenario.cards))
            if taken:
                raise ScenarioError(
                    "", f"payment method id {taken[0]!r} already exists in the database"
                )
            _write(conn, scenario, registered)
    except BaseException as err:
        _undo_refused_write(payments, registered, err)
        raise
    return LoadSummary(
        accounts=len(scenario.accounts),
        billing_contacts=len(scenario.billing_contacts),
        clients=len(scenario.clients),
        sessions=len(scenario.sessions),
        payment_methods=len(scenario.cards),
    )


def _undo_refused_write(
    payments: Payments, registered: Sequence[RegisteredCard], err: BaseException
) -> None:
    """A write that did not commit: the cards it registered in Stripe are deleted, and a
    database refusal becomes a ScenarioError that names the error type and constraint only
    (the driver's message may quote a failing row: names, emails)."""
    _delete_customers(payments, registered)
    if isinstance(err, DBAPIError):
        constraint = getattr(getattr(err.orig, "diag", None), "constraint_name", None)
        detail = type(err.orig).__name__ + (f" on {constraint}" if constraint else "")
        raise ScenarioError(
            "", f"the database refused the write ({detail}); nothing was written"
        ) from None


# --- Further changes ---------------------------------------------------------------------------


def apply_changes(path: Path, engine: Engine, payments: Payments) -> int:
    """Record a file of further changes (`{"changes": [...]}`) into a loaded database, as the
    EHR would in production: checked whole as `scenario load` checks `changes[]` (against the
    records the database holds), cards registered in Stripe, then written in one transaction.
    A change dated before nights that already ran affects only the nights not run yet: what
    those nights made stays as it was. Returns the number of history rows written."""
    doc = read_scenario(path)
    check_schema(doc, "changes")
    assert isinstance(doc, dict)  # the schema says so
    with engine.connect() as conn:
        existing = existing_records(conn, doc)
    checked = checked_scenario(doc, existing)
    registered = register_cards(payments, checked.cards) if checked.cards else []
    try:
        with engine.begin() as conn:
            checked = checked_scenario(doc, existing_records(conn, doc))
            taken = sorted(taken_payment_method_ids(conn, checked.cards))
            if taken:
                raise ScenarioError(
                    "", f"payment method id {taken[0]!r} already exists in the database"
                )
            now = store.utcnow()
            write_cards(conn, checked.cards, registered, now)
            store.record_changes(conn, checked.changes, now)
    except BaseException as err:
        _undo_refused_write(payments, registered, err)
        raise
    return len(checked.changes)
