"""AutoPay's own rules: the attempt key, the retry policy, the amount."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from enum import StrEnum

MAX_DECLINES_IN_A_ROW = 3


class Outcome(StrEnum):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    DECLINED = "declined"
    REQUIRES_ACTION = "requires_action"
    ERROR = "error"


def idempotency_key(client_id: str, payment_method_id: str, night: date) -> str:
    """Deterministic: the same client, card and night always give the same key, so a re-run,
    a backfill or a second worker can never make a second attempt for that night."""
    raw = f"{client_id}|{payment_method_id}|{night.isoformat()}"
    return "autopay-" + hashlib.sha256(raw.encode()).hexdigest()[:40]


@dataclass(frozen=True)
class PastAttempt:
    night: date
    payment_method_id: str
    outcome: Outcome


class RetryBlock(StrEnum):
    NONE = "none"
    PENDING = "attempt_pending"
    NEEDS_AUTHENTICATION = "requires_action"
    DECLINED_THREE_TIMES = "declined_three_times"


RETRY_WORDS = {
    RetryBlock.PENDING: "an earlier attempt has no known outcome yet and is being reconciled",
    RetryBlock.NEEDS_AUTHENTICATION: (
        "the card needs the cardholder's authentication; AutoPay will not retry it until the "
        "payment method is replaced"
    ),
    RetryBlock.DECLINED_THREE_TIMES: (
        "the card was declined three times in a row; AutoPay stops until the payment method "
        "is replaced"
    ),
}


def retry_block(history: Sequence[PastAttempt], payment_method_id: str) -> RetryBlock:
    """Whether the policy still allows a new attempt on this card.

    Nightly retries continue while a balance remains, except: an attempt that needs
    authentication is never retried on the same card, and three declines in a row on the same
    card stop AutoPay for it. Errors (network, 5xx) are not declines and do not count.
    """
    same_card = sorted(
        (a for a in history if a.payment_method_id == payment_method_id),
        key=lambda a: a.night,
    )
    if any(a.outcome == Outcome.PENDING for a in same_card):
        return RetryBlock.PENDING
    streak = 0
    for attempt in reversed(same_card):
        if attempt.outcome == Outcome.ERROR:
            continue
        if attempt.outcome == Outcome.REQUIRES_ACTION:
            return RetryBlock.NEEDS_AUTHENTICATION
        if attempt.outcome != Outcome.DECLINED:
            break
        streak += 1
        if streak >= MAX_DECLINES_IN_A_ROW:
            return RetryBlock.DECLINED_THREE_TIMES
    return RetryBlock.NONE


def charge_amount(open_bill_amounts: Sequence[int]) -> int:
    """One attempt charges the whole open balance, in integer cents."""
    if any(not isinstance(a, int) or isinstance(a, bool) or a < 0 for a in open_bill_amounts):
        raise ValueError("bill amounts must be non-negative integer cents")
    return sum(open_bill_amounts)
