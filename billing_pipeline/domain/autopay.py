"""AutoPay's own rules: the attempt key, the retry policy, the amount, what to do with an
attempt Stripe never saw, and how finance compares our payments with Stripe's charges."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from enum import StrEnum

from billing_pipeline.domain.calendar import require_aware

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
    card: str  # the card's identity (`domain.settings.card_identity`, `Card.key`)
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


def retry_block(history: Sequence[PastAttempt], card: str) -> RetryBlock:
    """Whether the policy still allows a new attempt on this card (its identity: payer,
    number, expiry; `Card.key`).

    Nightly retries continue while a balance remains, except: an attempt that needs
    authentication is not retried on the same card, and three declines in a row on the same
    card stop AutoPay. The count is of the client's attempts in a row with one card: an
    attempt with another card than the one before it starts a new count and lifts a stop (a
    replaced card is tried again). Errors (network, 5xx) are not declines and do not count.
    An attempt with no known outcome yet blocks any new one for the client.
    """
    ordered = sorted(history, key=lambda a: a.night)
    if any(a.outcome == Outcome.PENDING for a in ordered):
        return RetryBlock.PENDING
    streak = 0
    for attempt in reversed(ordered):
        if attempt.card != card:
            break  # another card before: a new count starts with this one
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


# --- Whose is a pending attempt -----------------------------------------------------------------


def owner_is_dead(
    *,
    lease_expires_at: datetime | None,
    now: datetime,
    lock_released: bool | None,
    run_ended: bool = False,
) -> bool:
    """Whether the run that claimed a pending attempt is gone, so that this run may settle it
    now. It is gone when the lock its process held was released (the database or the kernel
    frees it the moment the process dies), when Dagster marked its run ended, or when its
    lease ran out (a process that stopped renewing it). An attempt with no lease at all was
    claimed before leases existed: nobody renews it."""
    if lock_released or run_ended:
        return True
    if lease_expires_at is None:
        return True
    return require_aware(lease_expires_at, "lease_expires_at") <= require_aware(now, "now")


# --- An attempt Stripe never saw --------------------------------------------------------------


class Unsent(StrEnum):
    """What reconciliation does with a pending attempt that Stripe has no PaymentIntent for
    (the run died, or Stripe never answered, before the charge reached it): no money moved."""

    RESEND = "resend"
    AUTOPAY_NO_LONGER_RUNS = "not_sent_autopay_off"
    PAYMENT_METHOD_CHANGED = "not_sent_payment_method_changed"
    BALANCE_CHANGED = "not_sent_balance_changed"


def unsent_attempt(
    *,
    autopay_runs: bool,
    payment_method_tonight: str | None,
    attempt_payment_method: str,
    stored_amount_cents: int,
    covered_bills: int,
    open_amounts_of_covered_bills: Sequence[int],
) -> Unsent:
    """Send it now, with the same key and the stored amount, only while nothing it was claimed
    on has changed: AutoPay still runs for the client, on the same card, and every bill it
    covers is still open with the same total. Otherwise it is closed (as an error: no money
    moved) and the next claim starts from the open balance as it is then. So a charge never
    exceeds the open balance of the bills it covers."""
    if not autopay_runs:
        return Unsent.AUTOPAY_NO_LONGER_RUNS
    if payment_method_tonight != attempt_payment_method:
        return Unsent.PAYMENT_METHOD_CHANGED
    if (
        len(open_amounts_of_covered_bills) != covered_bills
        or charge_amount(open_amounts_of_covered_bills) != stored_amount_cents
    ):
        return Unsent.BALANCE_CHANGED
    return Unsent.RESEND


# --- Finance: our payments against Stripe's charges ------------------------------------------


@dataclass(frozen=True)
class LedgerEntry:
    """One succeeded charge, as Stripe or as our payment rows know it (ids and cents only)."""

    payment_intent_id: str
    attempt_id: str
    night: date | None
    amount_cents: int
    account_id: str = ""


@dataclass(frozen=True)
class DriftRow:
    """One PaymentIntent (or attempt) on which Stripe and our books disagree, with both sides'
    figures (None where a side does not know it): a row of `payment_reconciliations`."""

    kind: str  # unknown_charge | missing_in_stripe | amount_mismatch | charged_twice
    payment_intent_id: str
    attempt_id: str
    account_id: str
    stripe_amount_cents: int | None
    our_amount_cents: int | None


@dataclass(frozen=True)
class LedgerDrift:
    """Where Stripe and our payment rows disagree for a night."""

    unknown_charges: tuple[str, ...] = ()  # succeeded in Stripe, no payment row of ours
    missing_in_stripe: tuple[str, ...] = ()  # a payment row Stripe has no succeeded charge for
    amount_mismatches: tuple[str, ...] = ()  # both know it, with different amounts
    charged_twice: tuple[str, ...] = ()  # attempt ids with more than one succeeded charge
    rows: tuple[DriftRow, ...] = ()  # the same, one row per PaymentIntent, both sides' figures

    @property
    def clean(self) -> bool:
        return not (
            self.unknown_charges
            or self.missing_in_stripe
            or self.amount_mismatches
            or self.charged_twice
        )

    def counts(self) -> dict[str, int]:
        return {
            "unknown_charges": len(self.unknown_charges),
            "missing_in_stripe": len(self.missing_in_stripe),
            "amount_mismatches": len(self.amount_mismatches),
            "charged_twice": len(self.charged_twice),
        }


def compare_ledgers(
    stripe: Sequence[LedgerEntry],
    ours: Sequence[LedgerEntry],
    in_flight: Collection[str] = (),
) -> LedgerDrift:
    """Stripe's succeeded charges carrying our metadata against our payment rows, matched by
    PaymentIntent id. Any difference is drift that finance must see, except a charge of an
    attempt that a live run is still charging (`in_flight`, attempt ids): its outcome is on
    its way to our books, and counting it would be a false alarm whenever two runs overlap."""
    by_intent = {e.payment_intent_id: e for e in stripe if e.attempt_id not in in_flight}
    ours_by_intent = {e.payment_intent_id: e for e in ours}
    per_attempt = Counter(e.attempt_id for e in stripe)
    unknown = sorted(set(by_intent) - set(ours_by_intent))
    missing = sorted(set(ours_by_intent) - set(by_intent))
    mismatched = sorted(
        pi
        for pi in set(by_intent) & set(ours_by_intent)
        if by_intent[pi].amount_cents != ours_by_intent[pi].amount_cents
    )
    twice = sorted(a for a, n in per_attempt.items() if n > 1)

    def row(kind: str, pi: str, theirs: LedgerEntry | None, mine: LedgerEntry | None) -> DriftRow:
        known = theirs or mine
        assert known is not None
        return DriftRow(
            kind,
            pi,
            known.attempt_id,
            known.account_id,
            theirs.amount_cents if theirs else None,
            mine.amount_cents if mine else None,
        )

    rows = [row("unknown_charge", pi, by_intent[pi], None) for pi in unknown]
    rows += [row("missing_in_stripe", pi, None, ours_by_intent[pi]) for pi in missing]
    rows += [row("amount_mismatch", pi, by_intent[pi], ours_by_intent[pi]) for pi in mismatched]
    rows += [
        row("charged_twice", e.payment_intent_id, e, ours_by_intent.get(e.payment_intent_id))
        for e in sorted(stripe, key=lambda e: e.payment_intent_id)
        if e.attempt_id in twice
    ]
    return LedgerDrift(
        unknown_charges=tuple(unknown),
        missing_in_stripe=tuple(missing),
        amount_mismatches=tuple(mismatched),
        charged_twice=tuple(twice),
        rows=tuple(rows),
    )


def listed_or_known_before(
    later: Sequence[LedgerEntry], before: Sequence[LedgerEntry], listed: Collection[str]
) -> list[LedgerEntry]:
    """The payments of a second read of our books that a Stripe list made between the two
    reads can be held against: those the first read already had, and those the list shows.
    A payment recorded after the list was made (a run charging at that moment) is newer than
    the list, not missing from Stripe."""
    known = {e.payment_intent_id for e in before} | set(listed)
    return [e for e in later if e.payment_intent_id in known]


def declines_in_a_row(history: Sequence[PastAttempt]) -> list[int]:
    """For each attempt in the order given, the declines in a row on its card up to and
    including it (0 when it was not a decline), counted as `retry_block` counts them: an
    attempt with another card than the one before starts a new count; errors and pending
    attempts neither count nor break the run."""
    streak = 0
    previous: str | None = None
    out = []
    for a in history:
        if a.card != previous:
            streak = 0
        previous = a.card
        if a.outcome == Outcome.DECLINED:
            streak += 1
            out.append(streak)
            continue
        if a.outcome in (Outcome.SUCCEEDED, Outcome.REQUIRES_ACTION):
            streak = 0
        out.append(0)
    return out
