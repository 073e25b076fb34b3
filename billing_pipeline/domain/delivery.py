"""When a document is shared and with whom."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from billing_pipeline.domain.calendar import require_aware
from billing_pipeline.domain.settings import DocumentType, Sharing


@dataclass(frozen=True)
class PlannedDelivery:
    document_type: DocumentType
    recipient: str  # "client" | "billing_contact"
    scheduled_at: datetime
    # A bill due at or after its night's AutoPay waits until that AutoPay has run, so it is
    # never shared before the card was charged.
    wait_for_autopay: bool


def plan_delivery(
    kind: DocumentType,
    created_at: datetime,
    sharing: Sharing,
    *,
    has_billing_contact: bool,
    autopay_at: datetime | None = None,
) -> PlannedDelivery | None:
    """None when the client does not share this kind; else due at creation plus the client's
    delay in exact minutes (so a daylight-saving change does not move it), to the billing
    contact when there is one, else to the client."""
    if not sharing.shares(kind):
        return None
    created_at = require_aware(created_at, "created_at")
    due = created_at + timedelta(minutes=sharing.delay_minutes(kind))
    wait = kind == DocumentType.BILL and autopay_at is not None and created_at < autopay_at <= due
    return PlannedDelivery(
        document_type=kind,
        recipient="billing_contact" if has_billing_contact else "client",
        scheduled_at=due,
        wait_for_autopay=wait,
    )


DEFAULT_OUTCOME_WAIT = timedelta(hours=6)


def outcome_wait_over(
    pending_claimed_at: datetime | None,
    scheduled_at: datetime,
    now: datetime,
    limit: timedelta = DEFAULT_OUTCOME_WAIT,
) -> bool:
    """Whether a bill may be shared now as far as AutoPay goes: no attempt on it is in flight
    (`pending_claimed_at` is None), or the bill has waited `limit` since it fell due and since
    the attempt was claimed (a real wait: a backfill's due times are long past), and then goes
    out as it stands. `now` is the real time."""
    if pending_claimed_at is None:
        return True
    since = max(require_aware(scheduled_at), require_aware(pending_claimed_at))
    return require_aware(now) >= since + limit


def bill_status_at(paid_at: datetime | None, at: datetime) -> str:
    """A bill is shared as it stands at delivery: paid if its payment came at or before."""
    if paid_at is not None and require_aware(paid_at) <= require_aware(at):
        return "paid"
    return "open"
