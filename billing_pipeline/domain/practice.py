"""The views of a practice that the rules work on: an account, its clients and their billing
contacts, as one night sees them (read by `db.store`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from billing_pipeline.domain.settings import BillCreation, Card, Party, Sharing


@dataclass(frozen=True)
class AccountView:
    id: str
    timezone: str
    bill_creation: BillCreation
    superbill_day_of_month: int
    autopay_enabled: bool


@dataclass(frozen=True)
class ContactView:
    id: str
    autopay_enabled: bool
    card: Card | None

    def party(self) -> Party:
        return Party("billing_contact", self.id, self.autopay_enabled, self.card)


@dataclass(frozen=True)
class ClientView:
    id: str
    account_id: str
    billing_contact_id: str | None
    auto_bill: bool
    superbills_enabled: bool
    autopay_enabled: bool
    sharing: Sharing
    card: Card | None

    def party(self) -> Party:
        return Party("client", self.id, self.autopay_enabled, self.card)


@dataclass(frozen=True)
class Practice:
    """An account with its clients and billing contacts, as one night sees them."""

    account: AccountView
    clients: Mapping[str, ClientView]
    contacts: Mapping[str, ContactView]

    def contact_of(self, client: ClientView) -> ContactView | None:
        if client.billing_contact_id is None:
            return None
        return self.contacts[client.billing_contact_id]
