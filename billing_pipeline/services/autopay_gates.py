"""Whether AutoPay charges one client on a night, and how much: the gates in order (the
client's decision, an attempt already made with tonight's key, a card stopped by its
declines or by a request for authentication, an open balance). The claim (services/autopay.py),
the anomaly guard and the preview all ask this one function, so they cannot disagree.

The decision it takes is the night's `resolved_settings` row (`resolved_decisions`: the real
night reads its upstream, the rule applied once there) or, for a preview that writes nothing,
the same rule applied to the practice as of 00:30 (`computed_decisions`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime

from sqlalchemy import Connection

from billing_pipeline.db import autopay as records
from billing_pipeline.db.nightly import resolved_autopay
from billing_pipeline.db.store import card_keys
from billing_pipeline.domain.autopay import RetryBlock, idempotency_key, retry_block
from billing_pipeline.domain.practice import Practice
from billing_pipeline.services.nightly import decide_autopay

NO_OPEN_BALANCE = "no_open_balance"
ALREADY_ATTEMPTED = "already_attempted"
SETTINGS_NOT_RESOLVED = "skipped_settings_not_resolved"


@dataclass(frozen=True)
class Decision:
    """AutoPay's decision for one client's night: whether it runs (and why not), the payer,
    the card and which card that is for the count of failures (`Card.key`)."""

    runs: bool
    reason: str
    payer: str
    payer_id: str | None
    payment_method_id: str | None
    card_key: str | None


def resolved_decisions(conn: Connection, account_id: str, night: date) -> dict[str, Decision]:
    """{client id: decision} from the night's `resolved_settings` rows."""
    cards = card_keys(conn, account_id)
    return {
        client_id: Decision(
            r.runs,
            r.reason,
            r.payer,
            r.payer_id,
            r.payment_method_id,
            None
            if r.payment_method_id is None
            else cards.get(r.payment_method_id, f"pm:{r.payment_method_id}"),
        )
        for client_id, r in resolved_autopay(conn, account_id, night).items()
    }


def computed_decisions(practice: Practice, night: date) -> dict[str, Decision]:
    """{client id: decision} by the rule itself (`practice` as of the night's 00:30)."""
    found = {}
    for client in practice.clients.values():
        d = decide_autopay(practice, client, night)
        found[client.id] = Decision(
            d.runs,
            d.reason.value,
            d.payer_kind,
            d.payer.id,
            d.card.payment_method_id if d.card else None,
            d.card.key if d.card else None,
        )
    return found


@dataclass(frozen=True)
class Gate:
    """One client's AutoPay tonight: `stopped_by` is the figures key of the gate that stops
    it (None: it is charged `amount_cents` for `bills`)."""

    client_id: str
    stopped_by: str | None
    decision: Decision | None
    key: str | None = None
    bills: list[records.OpenBill] = field(default_factory=list)

    @property
    def amount_cents(self) -> int:
        return sum(b.amount_cents for b in self.bills)


def autopay_gate(
    conn: Connection, client_id: str, decision: Decision | None, night: date, at: datetime
) -> Gate:
    """The gates of one client's AutoPay at `at` (the night's 00:30); reads only."""
    if decision is None:
        return Gate(client_id, SETTINGS_NOT_RESOLVED, None)
    if not decision.runs or decision.payment_method_id is None or decision.card_key is None:
        return Gate(client_id, f"skipped_{decision.reason}", decision)
    key = idempotency_key(client_id, decision.payment_method_id, night)
    if records.attempt_exists(conn, key):
        return Gate(client_id, ALREADY_ATTEMPTED, decision, key)
    block = retry_block(records.attempt_history(conn, client_id), decision.card_key)
    if block != RetryBlock.NONE:
        return Gate(client_id, f"skipped_{block.value}", decision, key)
    bills = [b for b in records.open_bills(conn, client_id, at) if b.amount_cents > 0]
    if not bills:
        return Gate(client_id, NO_OPEN_BALANCE, decision, key)
    return Gate(client_id, None, decision, key, bills)
