"""AutoPay's pure rules added with reconciliation (no database, no Stripe): when an attempt
Stripe never saw may be sent again, how declines in a row are counted for staff, and the
test-only crash hook's refusal of a misspelt point. (They live here, beside the integration
tests that exercise them end to end.)"""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from billing_pipeline.domain.autopay import (
    Outcome,
    PastAttempt,
    Unsent,
    declines_in_a_row,
    retry_block,
    unsent_attempt,
)
from billing_pipeline.testing import FAULT_ENV, FaultPoint, fault_point


def verdict(**changes: object) -> Unsent:
    facts: dict[str, object] = {
        "autopay_runs": True,
        "payment_method_tonight": "pm-a",
        "attempt_payment_method": "pm-a",
        "stored_amount_cents": 30000,
        "covered_bills": 2,
        "open_amounts_of_covered_bills": [15000, 15000],
    }
    facts.update(changes)
    return unsent_attempt(**facts)  # type: ignore[arg-type]  # one dict of mixed field types, one per keyword


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({}, Unsent.RESEND),
        ({"autopay_runs": False}, Unsent.AUTOPAY_NO_LONGER_RUNS),
        ({"payment_method_tonight": "pm-b"}, Unsent.PAYMENT_METHOD_CHANGED),
        ({"payment_method_tonight": None}, Unsent.PAYMENT_METHOD_CHANGED),
        # A covered bill was paid: sending the stored amount would exceed the open balance.
        ({"open_amounts_of_covered_bills": [15000]}, Unsent.BALANCE_CHANGED),
        ({"open_amounts_of_covered_bills": [15000, 14000]}, Unsent.BALANCE_CHANGED),
        ({"open_amounts_of_covered_bills": []}, Unsent.BALANCE_CHANGED),
    ],
)
def test_an_unsent_attempt_is_sent_again_only_if_nothing_changed(
    changes: dict[str, object], expected: Unsent
) -> None:
    assert verdict(**changes) == expected


S, D, E, R, P = (
    Outcome.SUCCEEDED,
    Outcome.DECLINED,
    Outcome.ERROR,
    Outcome.REQUIRES_ACTION,
    Outcome.PENDING,
)


@pytest.mark.parametrize(
    ("outcomes", "streaks"),
    [
        ((), []),
        ((D, D, D), [1, 2, 3]),
        ((D, S, D), [1, 0, 1]),
        ((D, E, D, P, D), [1, 0, 2, 0, 3]),  # errors and pending neither count nor break
        ((D, R, D), [1, 0, 1]),
    ],
)
def test_declines_in_a_row_agree_with_the_retry_rule(
    outcomes: tuple[Outcome, ...], streaks: list[int]
) -> None:
    first = date(2026, 11, 1)
    history = [PastAttempt(first + timedelta(days=i), "pm-a", o) for i, o in enumerate(outcomes)]
    assert declines_in_a_row(history) == streaks
    if streaks and streaks[-1] >= 3:
        assert retry_block([a for a in history if a.outcome != P], "pm-a").value == (
            "declined_three_times"
        )


def test_an_attempt_on_another_card_starts_a_new_count() -> None:
    night = date(2026, 11, 1)
    history = [
        PastAttempt(night, "pm-a", D),
        PastAttempt(night + timedelta(days=1), "pm-a", D),
        PastAttempt(night + timedelta(days=2), "pm-b", D),
        PastAttempt(night + timedelta(days=3), "pm-a", D),
    ]
    assert declines_in_a_row(history) == [1, 2, 1, 1]
    assert retry_block(history, "pm-a").value == "none"


def test_the_crash_hook_is_off_without_the_variable_and_refuses_a_misspelt_point(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(FAULT_ENV, raising=False)
    fault_point(FaultPoint.AFTER_OUTCOME)  # no variable: nothing happens
    monkeypatch.setenv(FAULT_ENV, "after_outcome@5")
    fault_point(FaultPoint.BEFORE_STRIPE)  # another point: nothing happens
    monkeypatch.setenv(FAULT_ENV, "after_stripe_sucess")
    with pytest.raises(ValueError, match="unknown fault point 'after_stripe_sucess'"):
        fault_point(FaultPoint.AFTER_OUTCOME)
