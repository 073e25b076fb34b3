"""The pure rules of recovery: whose a pending attempt is, how long a bill waits for its
AutoPay outcome, and what reconciliation counts as drift while a run is charging."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from billing_pipeline.domain.autopay import (
    LedgerEntry,
    compare_ledgers,
    listed_or_known_before,
    owner_is_dead,
)
from billing_pipeline.domain.delivery import DEFAULT_OUTCOME_WAIT, outcome_wait_over

NOW = datetime(2026, 11, 3, 5, 31, tzinfo=UTC)


@pytest.mark.parametrize(
    ("lease", "lock_released", "run_ended", "dead"),
    [
        (NOW + timedelta(seconds=30), False, False, False),  # live: lock held, lease running
        (NOW + timedelta(seconds=30), True, False, True),  # killed: the lock died with it
        (NOW + timedelta(seconds=30), None, False, False),  # no lock here: the lease decides
        (NOW + timedelta(seconds=30), False, True, True),  # Dagster marked its run failed
        (NOW, False, False, True),  # the lease ran out at this very instant
        (NOW - timedelta(seconds=1), None, False, True),  # lease ran out, nothing else known
        (None, False, False, True),  # claimed before leases existed: nobody renews it
    ],
)
def test_owner_is_dead(
    lease: datetime | None, lock_released: bool | None, run_ended: bool, dead: bool
) -> None:
    assert (
        owner_is_dead(
            lease_expires_at=lease, now=NOW, lock_released=lock_released, run_ended=run_ended
        )
        is dead
    )


def test_owner_is_dead_refuses_naive_instants() -> None:
    with pytest.raises(ValueError, match="lease_expires_at"):
        owner_is_dead(lease_expires_at=datetime(2026, 11, 3, 5, 31), now=NOW, lock_released=False)


def test_a_bill_with_no_attempt_in_flight_goes_at_once() -> None:
    assert outcome_wait_over(None, NOW, NOW)


def test_a_bill_waits_for_its_attempt_then_goes_after_the_limit() -> None:
    due = NOW - timedelta(hours=1)
    claimed = NOW - timedelta(minutes=5)
    assert not outcome_wait_over(claimed, due, NOW)
    assert not outcome_wait_over(
        claimed, due, claimed + DEFAULT_OUTCOME_WAIT - timedelta(seconds=1)
    )
    assert outcome_wait_over(claimed, due, claimed + DEFAULT_OUTCOME_WAIT)


def test_the_wait_counts_from_the_later_of_due_time_and_claim() -> None:
    # A backfill: the bill fell due days ago, the attempt was claimed just now.
    due = NOW - timedelta(days=20)
    assert not outcome_wait_over(NOW, due, NOW + timedelta(hours=5))
    # A bill due after the claim waits from its due time.
    later = NOW + timedelta(hours=2)
    limit = timedelta(hours=1)
    assert not outcome_wait_over(NOW, later, later + timedelta(minutes=59), limit)
    assert outcome_wait_over(NOW, later, later + limit, limit)


N = date(2026, 11, 2)


def test_a_live_runs_charge_is_in_flight_not_an_unknown_charge() -> None:
    stripe = [LedgerEntry("pi_1", "1", N, 100), LedgerEntry("pi_2", "2", N, 200)]
    ours = [LedgerEntry("pi_1", "1", N, 100)]
    assert compare_ledgers(stripe, ours).unknown_charges == ("pi_2",)
    assert compare_ledgers(stripe, ours, in_flight={"2"}).clean
    # In flight never hides a charge of an attempt that is not.
    assert compare_ledgers(stripe, ours, in_flight={"3"}).unknown_charges == ("pi_2",)


def test_a_payment_recorded_after_the_stripe_list_is_not_missing_in_stripe() -> None:
    # Read 1 of our books, then Stripe's list, then read 2: another run recorded pi_3 after
    # the list was made, and pi_2 (in the list) between read 1 and the list.
    before = [LedgerEntry("pi_1", "1", N, 100)]
    stripe = [LedgerEntry("pi_1", "1", N, 100), LedgerEntry("pi_2", "2", N, 200)]
    later = [*before, LedgerEntry("pi_2", "2", N, 200), LedgerEntry("pi_3", "3", N, 300)]
    held = listed_or_known_before(later, before, {e.payment_intent_id for e in stripe})
    assert [e.payment_intent_id for e in held] == ["pi_1", "pi_2"]
    assert compare_ledgers(stripe, held).clean
    # A payment the first read had and Stripe does not list is still missing in Stripe.
    lost = LedgerEntry("pi_9", "9", N, 900)
    held = listed_or_known_before([*later, lost], [*before, lost], {"pi_1", "pi_2"})
    assert compare_ledgers(stripe, held).missing_in_stripe == ("pi_9",)
