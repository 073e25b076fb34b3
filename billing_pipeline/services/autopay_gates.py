"""Whether AutoPay charges one client on a night, and how much: the gates in order (the
client's decision, an attempt already made with tonight's key, a card stopped by its
declines or by a request for authentication, an open balance). The claim (services/autopay.py),
the anomaly guard and the preview all ask this one function, so they cannot disagree."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime

from sqlalchemy import Connection

from billing_pipeline.db import autopay as records
from billing_pipeline.domain.autopay import RetryBlock, idempotency_key, retry_block
from billing_pipeline.domain.practice import Practice
from billing_pipeline.domain.settings import AutopayDecision
from billing_pipeline.services.nightly import decide_autopay

NO_OPEN_BALANCE = "no_open_balance"
ALREADY_ATTEMPTED = "already_attempted"


@dataclass(frozen=True)
class Gate:
    """One client's AutoPay tonight: `stopped_by` is the figures key of the gate that stops
    it (None: it is charged `amount_cents` for `bills`)."""

    client_id: str
    stopped_by: str | None
    decision: AutopayDecision
    key: str | None = None
    bills: list[records.OpenBill] = field(default_factory=list)

    @property
    def amount_cents(self) -> int:
        return sum(b.amount_cents for b in self.bills)


def autopay_gate(
    conn: Connection, practice: Practice, client_id: str, night: date, at: datetime
) -> Gate:
    """The gates of one client's AutoPay at `at` (the night's 00:30); reads only."""
    client = practice.clients[client_id]
    decision = decide_autopay(practice, client, night)
    if not decision.runs or decision.card is None:
        return Gate(client_id, f"skipped_{decision.reason.value}", decision)
    key = idempotency_key(client_id, decision.card.payment_method_id, night)
    if records.attempt_exists(conn, key):
        return Gate(client_id, ALREADY_ATTEMPTED, decision, key)
    block = retry_block(records.attempt_history(conn, client_id), decision.card.key)
    if block != RetryBlock.NONE:
        return Gate(client_id, f"skipped_{block.value}", decision, key)
    bills = [b for b in records.open_bills(conn, client_id, at) if b.amount_cents > 0]
    if not bills:
        return Gate(client_id, NO_OPEN_BALANCE, decision, key)
    return Gate(client_id, None, decision, key, bills)
