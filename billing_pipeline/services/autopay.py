"""One practice's AutoPay for one night: settle what a dead run left, then claim, charge and
record in small batches.

1. Settle first: a pending attempt whose owner is dead (its session-bound lock was released,
   Dagster ended its run, or its lease ran out: `domain.autopay.owner_is_dead`) is taken over
   by this run at once (one run only: compare and set on its owner and claim time) and settled
   with Stripe: the PaymentIntent we recorded, else the one carrying our attempt id, key and
   customer. Stripe's outcome is written. When Stripe has none, no money moved: the attempt is
   sent again, with its key and stored amount, if nothing it was claimed on has changed, else
   closed as an error. A live owner's attempts are left alone. localstripe ignores
   idempotency keys, so this, not the header, is the guarantee.
2. Claim a small batch: for each client with an open balance whom the rules allow, an attempt
   row with the deterministic key, the bills it covers and this run as its owner is committed
   as `pending` before Stripe is called. Two runs cannot both claim a client: unique key, one
   pending attempt per client.
3. Charge the batch through the bounded pool; record each outcome in its own transaction as
   it comes; then the next batch. A kill loses at most one batch's outcomes, and those are
   settled by the next run straight away.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from functools import partial

from sqlalchemy import Connection

from billing_pipeline.db import autopay as records
from billing_pipeline.db.nightly import mark_step, resolved_autopay, step_done
from billing_pipeline.db.owners import ClaimOwner, OwnerProbe, run_id_of
from billing_pipeline.db.store import load_practice
from billing_pipeline.domain.autopay import (
    LedgerDrift,
    LedgerEntry,
    Outcome,
    Unsent,
    compare_ledgers,
    listed_or_known_before,
    owner_is_dead,
    unsent_attempt,
)
from billing_pipeline.domain.practice import Practice
from billing_pipeline.domain.schedule import Step
from billing_pipeline.errors import SafeMessageError
from billing_pipeline.resources.database import BillingDatabase
from billing_pipeline.resources.payments import (
    META_ACCOUNT,
    META_ATTEMPT,
    META_NIGHT,
    ChargeRequest,
    ChargeResult,
    Payments,
    StripeUnavailable,
)
from billing_pipeline.services.autopay_gates import (
    NO_OPEN_BALANCE,
    autopay_gate,
    resolved_decisions,
)
from billing_pipeline.services.guard import HELD_BY_GUARD, guard_night
from billing_pipeline.services.nightly import NightFigures
from billing_pipeline.testing import FaultPoint, fault_point

BILLS_NOT_MADE = "bills_not_made"


# --- Reconciliation ---------------------------------------------------------------------------


@dataclass
class Reconciled:
    """What reconciliation settled, and the attempts it sends again."""

    counts: Counter[str] = field(default_factory=Counter)
    amount_cents: int = 0
    resend: list[records.ClaimedAttempt] = field(default_factory=list)

    def add(self, key: str, n: int = 1) -> None:
        self.counts[key] += n


def _unsent_verdict(
    conn: Connection, attempt: records.PendingAttempt, account_id: str, night: date, at: datetime
) -> tuple[Unsent, records.ClaimedAttempt | None]:
    decision = resolved_autopay(conn, account_id, night).get(attempt.client_id)
    covered, open_amounts = records.open_amounts_of_covered_bills(conn, attempt.id)
    verdict = unsent_attempt(
        autopay_runs=decision is not None and decision.runs,
        payment_method_tonight=decision.payment_method_id if decision else None,
        attempt_payment_method=attempt.payment_method_id,
        stored_amount_cents=attempt.amount_cents,
        covered_bills=covered,
        open_amounts_of_covered_bills=open_amounts,
    )
    return verdict, records.claimed_attempt(conn, attempt.id)


def reconcile_pending(
    db: BillingDatabase,
    payments: Payments,
    account_id: str,
    night: date,
    at: datetime,
    owner: ClaimOwner,
    owner_gone: Callable[[records.PendingAttempt], bool],
) -> Reconciled:
    """Settle the practice's attempts whose outcome we never wrote and whose owner is gone
    (see the module's note). A live owner's attempts are left to it."""
    done = Reconciled()
    with db.engine.connect() as conn:
        pending = records.pending_attempts(conn, account_id)
    mine = [p for p in pending if p.owner != owner.token]
    dead = [p for p in mine if owner_gone(p)]
    if len(dead) < len(mine):
        done.add("pending_in_another_run", len(mine) - len(dead))
    for attempt in dead:
        if not db.transact(
            partial(
                records.take_over,
                attempt=attempt,
                owner=owner.token,
                lease_expires_at=owner.lease_until(),
            )
        ):
            done.add("taken_over_by_another_run")
            continue
        try:
            state = None
            if attempt.stripe_payment_intent_id:
                state = payments.retrieve_intent(attempt.stripe_payment_intent_id)
            if state is None:
                # The customer's intents only (Stripe filters them; localstripe cannot, and
                # is listed whole). Not by `created`: a take-over moves `claimed_at` on, and
                # the intent may be older than the latest claim.
                listed = payments.intents_with_metadata(customer=attempt.stripe_customer_id)
                state = payments.find_intent(
                    attempt.id, attempt.idempotency_key, attempt.stripe_customer_id, listed
                )
        except StripeUnavailable:
            # We cannot know; it stays pending (and blocks a new attempt for the client).
            done.add("reconcile_stripe_unavailable")
            continue
        if state is not None and state.outcome == Outcome.PENDING:
            done.add("reconcile_still_processing")
            db.transact(
                partial(
                    records.note_unknown,
                    attempt_id=attempt.id,
                    payment_intent_id=state.id,
                    reason="stripe_processing",
                )
            )
            continue
        if state is not None:
            wrote = db.transact(
                partial(
                    records.record_outcome,
                    attempt_id=attempt.id,
                    outcome=state.outcome,
                    payment_intent_id=state.id,
                    failure_code=state.failure_code,
                    # Stripe charged it on its own night: stamped with that night's instant.
                    at=attempt.attempted_at,
                )
            )
            if wrote:
                done.add(f"reconciled_{state.outcome.value}")
                if state.outcome == Outcome.SUCCEEDED:
                    done.amount_cents += attempt.amount_cents
            continue
        # Stripe has no PaymentIntent for it: the charge never reached Stripe.
        verdict, claimed = db.transact(
            partial(_unsent_verdict, attempt=attempt, account_id=account_id, night=night, at=at)
        )
        if verdict == Unsent.RESEND and claimed is not None:
            done.add("resent_after_reconciliation")
            done.resend.append(claimed)
            continue
        db.transact(
            partial(
                records.record_outcome,
                attempt_id=attempt.id,
                outcome=Outcome.ERROR,
                payment_intent_id=None,
                failure_code=verdict.value,
                at=at,
            )
        )
        done.add(f"reconciled_{verdict.value}")
    return done


# --- Claim --------------------------------------------------------------------------------------


def claim_batch(
    conn: Connection,
    practice: Practice,
    client_ids: Sequence[str],
    night: date,
    at: datetime,
    owner: ClaimOwner,
    figures: NightFigures,
) -> list[records.ClaimedAttempt]:
    """Claim an attempt for each of these clients that AutoPay may charge tonight (inside one
    transaction that the caller commits before any Stripe call)."""
    claims = []
    # The night's resolved_settings rows decide (true lineage: the rule is applied once, there).
    decisions = resolved_decisions(conn, practice.account.id, night)
    for client_id in client_ids:
        gate = autopay_gate(conn, client_id, decisions.get(client_id), night, at)
        if gate.stopped_by is not None:
            if gate.stopped_by != NO_OPEN_BALANCE:
                figures.add(gate.stopped_by)
            continue
        decision, key, bills = gate.decision, gate.key, gate.bills
        if decision is None or decision.payment_method_id is None or key is None:
            continue  # not so once the gates let it through
        card_id = decision.payment_method_id
        claim = records.claim_attempt(
            conn,
            key=key,
            account_id=practice.account.id,
            client_id=client_id,
            night=night,
            payer=decision.payer,
            payer_id=decision.payer_id or client_id,
            payment_method_id=card_id,
            bills=bills,
            attempted_at=at,
            owner=owner.token,
            lease_expires_at=owner.lease_until(),
        )
        if isinstance(claim, records.ClaimRefused):
            figures.add(claim.value)
            continue
        claims.append(claim)
    return claims


# --- The night ----------------------------------------------------------------------------------


class ClaimsLost(SafeMessageError):
    """This run lost its claim lock (its database session broke): another run may now settle
    its attempts, so it sends no further charge."""

    def __init__(self) -> None:
        super().__init__(
            "AutoPay lost its claim lock (the database session broke); no further charge was "
            "sent, and the next run settles what is pending"
        )


def _request(claim: records.ClaimedAttempt) -> ChargeRequest:
    return ChargeRequest(
        attempt_id=claim.id,
        client_id=claim.client_id,
        idempotency_key=claim.idempotency_key,
        stripe_customer_id=claim.stripe_customer_id,
        stripe_payment_method_id=claim.stripe_payment_method_id,
        amount_cents=claim.amount_cents,
        account_id=claim.account_id,
        night=claim.night,
    )


def owner_gone_rule(
    probe: OwnerProbe, run_ended: Callable[[str], bool] = lambda _run_id: False
) -> Callable[[records.PendingAttempt], bool]:
    """`domain.autopay.owner_is_dead` for a pending attempt, asking each owner's lock and
    Dagster's view of its run once."""
    verdicts: dict[str, bool] = {}

    def gone(attempt: records.PendingAttempt) -> bool:
        if attempt.owner is None:
            return True
        if attempt.owner not in verdicts:
            run_id = run_id_of(attempt.owner)
            verdicts[attempt.owner] = owner_is_dead(
                lease_expires_at=attempt.lease_expires_at,
                now=datetime.now(UTC),
                lock_released=probe.lock_released(attempt.owner),
                run_ended=run_id is not None and run_ended(run_id),
            )
        return verdicts[attempt.owner]

    return gone


def run_autopay_night(
    db: BillingDatabase,
    payments: Payments,
    account_id: str,
    night: date,
    at: datetime,
    *,
    owner: ClaimOwner,
    owner_gone: Callable[[records.PendingAttempt], bool] | None = None,
    run_id: str | None = None,
    batch_size: int = 16,
) -> NightFigures:
    """AutoPay for one practice's night. Never runs for a night whose bills were not made."""
    figures = NightFigures(account_id, night)
    with db.engine.connect() as conn:
        ready = step_done(conn, account_id, night, Step.BILLS)
    if not ready:
        # Bills are made only once the night's settings are resolved, so this covers both.
        figures.add(BILLS_NOT_MADE)
        return figures

    gone = owner_gone or owner_gone_rule(OwnerProbe(db.engine))
    reconciled = reconcile_pending(db, payments, account_id, night, at, owner, gone)
    for key, n in reconciled.counts.items():
        figures.add(key, n)
    figures.amount_cents += reconciled.amount_cents

    by_id: dict[int, records.ClaimedAttempt] = {}

    def record(result: ChargeResult) -> None:
        claimed = by_id[result.attempt_id]
        if result.outcome == Outcome.PENDING:
            # Network, 5xx or 429 after our retries: unknown, never a decline. Left pending
            # for reconciliation, which asks Stripe before anything is sent again.
            db.transact(
                lambda conn: records.note_unknown(
                    conn, result.attempt_id, result.payment_intent_id, result.failure_code
                )
            )
            figures.add("left_pending_for_reconciliation")
            figures.ids.append(str(result.attempt_id))
            return
        if result.outcome == Outcome.SUCCEEDED:
            fault_point(FaultPoint.AFTER_STRIPE_SUCCESS)
        wrote = db.transact(
            lambda conn: records.record_outcome(
                conn,
                result.attempt_id,
                result.outcome,
                payment_intent_id=result.payment_intent_id,
                failure_code=result.failure_code,
                at=at,
            )
        )
        fault_point(FaultPoint.AFTER_OUTCOME)
        if not wrote:
            figures.add("outcome_recorded_by_another_run")
            return
        figures.add(f"outcome_{result.outcome.value}")
        if result.outcome == Outcome.SUCCEEDED:
            figures.amount_cents += claimed.amount_cents
        figures.ids.append(str(result.attempt_id))

    def before_send(_request: ChargeRequest) -> None:
        if owner.lost:
            raise ClaimsLost
        fault_point(FaultPoint.BEFORE_STRIPE)

    def charge(claims: Sequence[records.ClaimedAttempt]) -> None:
        by_id.update((c.id, c) for c in claims)
        payments.charge_many([_request(c) for c in claims], record, before_send=before_send)

    charge(reconciled.resend)
    with db.engine.connect() as conn:
        practice = load_practice(conn, account_id, at)  # as of the night's 00:30
        candidates = records.clients_with_open_bills(conn, account_id, at)

    # The anomaly guard (services/guard.py): a night unlike the practice's history is held;
    # nothing is charged and the step stays not done until staff release it.
    def judged(conn: Connection) -> bool:
        decisions = resolved_decisions(conn, account_id, night)
        return guard_night(conn, practice, candidates, night, at, decisions).held

    if db.transact(judged):
        figures.add(HELD_BY_GUARD)
        return figures
    attempts = 0
    for start in range(0, len(candidates), max(batch_size, 1)):
        if not owner.still_held():
            raise ClaimsLost
        batch = candidates[start : start + max(batch_size, 1)]

        def claim(
            conn: Connection, batch: Sequence[str] = batch
        ) -> tuple[list[records.ClaimedAttempt], dict[str, int]]:
            # Counted apart: a retried transaction must not count twice.
            counted = NightFigures(account_id, night)
            return claim_batch(conn, practice, batch, night, at, owner, counted), counted.counts

        claims, claim_counts = db.transact(claim)
        for key, n in claim_counts.items():
            figures.add(key, n)
        attempts += len(claims)
        charge(claims)
    db.transact(lambda conn: mark_step(conn, account_id, night, Step.AUTOPAY, at, run_id))
    figures.add("attempts", attempts)
    return figures


# --- Finance ------------------------------------------------------------------------------------


def ledger_drift(
    db: BillingDatabase,
    payments: Payments,
    account_ids: list[str],
    nights: list[date],
    owner_gone: Callable[[records.PendingAttempt], bool] | None = None,
) -> dict[date, LedgerDrift]:
    """Per night, Stripe's succeeded PaymentIntents carrying our metadata (these practices,
    their customers) against our payment rows for the night's attempts.

    Our books are read before Stripe is listed, so a payment we hold is already in Stripe's
    list; a charge Stripe has that our snapshot does not may belong to an attempt a live run
    is still charging, so where anything differs the books are read once more, and a pending
    attempt whose owner is alive counts as in flight, not as drift."""
    gone = owner_gone or owner_gone_rule(OwnerProbe(db.engine))
    with db.engine.connect() as conn:
        ours = records.books(conn, account_ids, nights)
        customers = records.stripe_customers(conn, account_ids)
    wanted = {n.isoformat(): n for n in nights}
    accounts = set(account_ids)
    theirs = [
        LedgerEntry(
            s.id,
            s.metadata[META_ATTEMPT],
            wanted[s.metadata[META_NIGHT]],
            s.amount_cents,
            s.metadata[META_ACCOUNT],
        )
        for s in payments.succeeded_charges()
        if s.metadata.get(META_NIGHT) in wanted
        and s.metadata.get(META_ACCOUNT) in accounts
        and s.customer in customers
    ]

    def compare(books: records.Books, payments: Sequence[LedgerEntry]) -> dict[date, LedgerDrift]:
        in_flight = {str(p.id) for p in books.pending if not gone(p)}
        return {
            n: compare_ledgers(
                [e for e in theirs if e.night == n],
                [e for e in payments if e.night == n],
                in_flight,
            )
            for n in nights
        }

    drift = compare(ours, ours.payments)
    if all(d.clean for d in drift.values()):
        return drift
    with db.engine.connect() as conn:
        again = records.books(conn, account_ids, nights)
    listed = {e.payment_intent_id for e in theirs}
    return compare(again, listed_or_known_before(again.payments, ours.payments, listed))
