"""One practice's AutoPay for one night: reconcile, claim, charge, record.

1. Reconcile first: attempts left `pending` by a crash, a kill or a timeout are settled with
   Stripe (the PaymentIntent we recorded, else the one carrying our attempt id in metadata).
2. Claim: for each client with an open balance whom the rules allow, an attempt row with the
   deterministic key and the bills it covers is committed as `pending` before Stripe is called.
3. Charge through the bounded pool; record each outcome in its own transaction.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from sqlalchemy import Connection

from billing_pipeline.db import autopay as records
from billing_pipeline.db.nightly import NightFigures, decide_autopay, mark_step, step_done
from billing_pipeline.db.store import Practice, load_practice
from billing_pipeline.domain.autopay import Outcome, RetryBlock, idempotency_key, retry_block
from billing_pipeline.resources.database import BillingDatabase
from billing_pipeline.resources.payments import ChargeRequest, ChargeResult, Payments

BILLS_NOT_MADE = "bills_not_made"


def reconcile_pending(
    db: BillingDatabase,
    payments: Payments,
    account_id: str,
    stale_after: timedelta,
    at: datetime,
) -> dict[str, int]:
    """Settle attempts whose outcome we never wrote. An attempt claimed less than
    `stale_after` ago may still be in another run's hands and is left alone."""
    counts: dict[str, int] = {}
    with db.engine.connect() as conn:
        pending = records.pending_attempts(conn, account_id)
    now = datetime.now(UTC)
    stale = [p for p in pending if now - p.claimed_at >= stale_after]
    if not stale:
        return counts
    listed = None
    for attempt in stale:
        if attempt.stripe_payment_intent_id:
            outcome, code = payments.retrieve_intent(attempt.stripe_payment_intent_id)
            intent_id: str | None = attempt.stripe_payment_intent_id
        else:
            if listed is None:
                listed = list(payments.intents_with_metadata())
            intent_id, outcome, code = payments.find_intent_for_attempt(attempt.id, listed)
            if intent_id is None:
                # Stripe never saw it: no money moved. Close it; the next night retries.
                outcome, code = Outcome.ERROR, "not_found_in_stripe"
        if outcome == Outcome.PENDING:
            counts["still_pending"] = counts.get("still_pending", 0) + 1
            continue

        def write(conn: Connection, a=attempt, o=outcome, c=code, i=intent_id) -> bool:  # type: ignore[no-untyped-def]
            return records.record_outcome(conn, a.id, o, payment_intent_id=i, failure_code=c, at=at)

        if db.transact(write):
            key = f"reconciled_{outcome.value}"
            counts[key] = counts.get(key, 0) + 1
    return counts


def claim_night(
    conn: Connection, practice: Practice, night: date, at: datetime, figures: NightFigures
) -> list[records.ClaimedAttempt]:
    """Claim an attempt for every client AutoPay may charge tonight (inside one transaction
    that the caller commits before any Stripe call)."""
    claims = []
    for client_id in records.clients_with_open_bills(conn, practice.account.id, at):
        client = practice.clients[client_id]
        decision = decide_autopay(practice, client, night)
        if not decision.runs or decision.card is None:
            figures.add(f"skipped_{decision.reason.value}")
            continue
        card_id = decision.card.payment_method_id
        key = idempotency_key(client_id, card_id, night)
        if records.attempt_exists(conn, key):
            figures.add("already_attempted")
            continue
        block = retry_block(records.attempt_history(conn, client_id), card_id)
        if block != RetryBlock.NONE:
            figures.add(f"skipped_{block.value}")
            continue
        bills = [b for b in records.open_bills(conn, client_id, at) if b.amount_cents > 0]
        if not bills:
            continue
        claim = records.claim_attempt(
            conn,
            key=key,
            account_id=practice.account.id,
            client_id=client_id,
            night=night,
            payer=decision.payer.kind,
            payer_id=decision.payer.id,
            payment_method_id=card_id,
            bills=bills,
            attempted_at=at,
        )
        if claim is None:
            figures.add("claimed_by_another_run")
            continue
        claims.append(claim)
    return claims


def run_autopay_night(
    db: BillingDatabase,
    payments: Payments,
    account_id: str,
    night: date,
    at: datetime,
    *,
    run_id: str | None = None,
    stale_after: timedelta = timedelta(minutes=5),
) -> NightFigures:
    """AutoPay for one practice's night. Never runs for a night whose bills were not made."""
    figures = NightFigures(account_id, night)
    with db.engine.connect() as conn:
        ready = step_done(conn, account_id, night, "bills")
    if not ready:
        figures.add(BILLS_NOT_MADE)
        return figures
    for key, n in reconcile_pending(db, payments, account_id, stale_after, at).items():
        figures.add(key, n)

    def claim(conn: Connection) -> list[records.ClaimedAttempt]:
        figures_try = NightFigures(account_id, night)
        claimed = claim_night(conn, load_practice(conn, account_id), night, at, figures_try)
        for key, n in figures_try.counts.items():
            figures.add(key, n)
        return claimed

    claims = db.transact(claim)
    by_id = {c.id: c for c in claims}

    def record(result: ChargeResult) -> None:
        claim_row = by_id[result.attempt_id]

        def write(conn: Connection) -> bool:
            return records.record_outcome(
                conn,
                result.attempt_id,
                result.outcome,
                payment_intent_id=result.payment_intent_id,
                failure_code=result.failure_code,
                at=at,
            )

        if result.outcome != Outcome.PENDING:
            db.transact(write)
        else:
            db.transact(
                lambda conn: records.remember_intent(
                    conn, result.attempt_id, result.payment_intent_id
                )
            )
        figures.add(
            f"outcome_{'error' if result.outcome == Outcome.PENDING else result.outcome.value}"
        )
        if result.outcome == Outcome.SUCCEEDED:
            figures.amount_cents += claim_row.amount_cents
        figures.ids.append(str(result.attempt_id))

    payments.charge_many(
        [
            ChargeRequest(
                attempt_id=c.id,
                client_id=c.client_id,
                idempotency_key=c.idempotency_key,
                stripe_customer_id=c.stripe_customer_id,
                stripe_payment_method_id=c.stripe_payment_method_id,
                amount_cents=c.amount_cents,
            )
            for c in claims
        ],
        record,
    )
    db.transact(lambda conn: mark_step(conn, account_id, night, "autopay", at, run_id))
    figures.add("attempts", len(claims))
    return figures
