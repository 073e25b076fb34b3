"""AutoPay's own rules: one key per client, card and night; when to stop retrying; the amount.

A declined attempt is retried on the next nights while a balance remains; AutoPay stops after
three failed attempts in a row with the same card. An attempt that needs the cardholder's
authentication is not retried. Errors (network, 5xx) are not declines. The count is of the
client's attempts in a row with one card: an attempt with another card (payer, number, expiry)
starts a new count and lifts a stop (the contract's "Changes over time").
"""

from __future__ import annotations

import random
from datetime import date, timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing_pipeline.domain.autopay import (
    MAX_DECLINES_IN_A_ROW,
    RETRY_WORDS,
    Outcome,
    PastAttempt,
    RetryBlock,
    charge_amount,
    idempotency_key,
    retry_block,
)

S, D, E, R, P = (
    Outcome.SUCCEEDED,
    Outcome.DECLINED,
    Outcome.ERROR,
    Outcome.REQUIRES_ACTION,
    Outcome.PENDING,
)
FIRST_NIGHT = date(2026, 11, 1)
CARD = "pm_card_a"
OTHER = "pm_card_b"


def history(*outcomes: Outcome, card: str = CARD, start: date = FIRST_NIGHT) -> list[PastAttempt]:
    return [PastAttempt(start + timedelta(days=i), card, o) for i, o in enumerate(outcomes)]


# --- Idempotency key ------------------------------------------------------------------------------


def test_idempotency_key_is_deterministic() -> None:
    a = idempotency_key("cl-ana", "pm_1", date(2026, 10, 20))
    b = idempotency_key("cl-ana", "pm_1", date(2026, 10, 20))
    assert a == b
    assert a.startswith("autopay-")
    assert len(a) == len("autopay-") + 40
    assert all(c in "0123456789abcdef" for c in a.removeprefix("autopay-"))


@pytest.mark.parametrize(
    ("client_id", "pm", "night"),
    [
        ("cl-ben", "pm_1", date(2026, 10, 20)),  # another client
        ("cl-ana", "pm_2", date(2026, 10, 20)),  # another card
        ("cl-ana", "pm_1", date(2026, 10, 21)),  # another night
    ],
)
def test_idempotency_key_differs_per_client_card_and_night(
    client_id: str, pm: str, night: date
) -> None:
    assert idempotency_key(client_id, pm, night) != idempotency_key(
        "cl-ana", "pm_1", date(2026, 10, 20)
    )


def test_idempotency_key_does_not_contain_the_ids() -> None:
    key = idempotency_key("cl-ana", "pm_secret", date(2026, 10, 20))
    assert "cl-ana" not in key
    assert "pm_secret" not in key


ids = st.text(
    alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-",
    min_size=1,
    max_size=64,
)
nights = st.dates(date(2020, 1, 1), date(2040, 12, 31))


@given(a=st.tuples(ids, ids, nights), b=st.tuples(ids, ids, nights))
def test_idempotency_key_is_distinct_iff_inputs_differ(
    a: tuple[str, str, date], b: tuple[str, str, date]
) -> None:
    assert (idempotency_key(*a) == idempotency_key(*b)) is (a == b)


# --- Retry policy ---------------------------------------------------------------------------------

NONE = RetryBlock.NONE
THREE = RetryBlock.DECLINED_THREE_TIMES
AUTH = RetryBlock.NEEDS_AUTHENTICATION
PENDING = RetryBlock.PENDING


@pytest.mark.parametrize(
    ("outcomes", "block"),
    [
        ((), NONE),
        ((S,), NONE),
        ((D,), NONE),
        ((D, D), NONE),
        ((D, D, D), THREE),  # three declines in a row stop AutoPay on the card
        ((D, D, D, D), THREE),
        ((S, D, D, D), THREE),
        ((D, D, S), NONE),  # a success resets the count
        ((D, D, D, S), NONE),
        ((D, D, S, D, D), NONE),
        ((D, D, S, D, D, D), THREE),
        ((E,), NONE),  # errors are not declines...
        ((E, E, E, E), NONE),
        ((D, D, E), NONE),
        ((D, E, D, E, D), THREE),  # ...and do not break a run of declines either
        ((D, D, E, E, D), THREE),
        ((D, D, D, E), THREE),
        ((R,), AUTH),  # needs authentication: never retried on that card
        ((D, R), AUTH),
        ((R, E), AUTH),
        ((S, R), AUTH),
        ((R, D, D), AUTH),
        ((P,), PENDING),  # an attempt with no known outcome blocks a new one
        ((S, P), PENDING),
        ((P, S), PENDING),
        ((D, D, D, P), PENDING),
    ],
)
def test_retry_block(outcomes: tuple[Outcome, ...], block: RetryBlock) -> None:
    assert retry_block(history(*outcomes), CARD) == block


@pytest.mark.parametrize("old_card_outcomes", [(D, D, D), (R,), (D, R), (D, D, D, E)])
def test_a_new_card_starts_afresh(old_card_outcomes: tuple[Outcome, ...]) -> None:
    past = history(*old_card_outcomes, card=CARD)
    assert retry_block(past, CARD) != NONE
    assert retry_block(past, OTHER) == NONE


def test_declines_on_another_card_do_not_count() -> None:
    past = history(D, D, card=OTHER) + history(D, D, card=CARD, start=date(2026, 12, 1))
    assert retry_block(past, CARD) == NONE
    assert retry_block(past, OTHER) == NONE


def test_requires_action_blocks_that_card_until_another_card_is_tried() -> None:
    past = history(R, card=CARD)
    assert retry_block(past, CARD) == AUTH
    assert retry_block(past, OTHER) == NONE
    # The card was replaced and the replacement tried: the count starts again, on either card.
    past += history(D, card=OTHER, start=date(2026, 12, 1))
    assert retry_block(past, CARD) == NONE
    assert retry_block(past, OTHER) == NONE


def test_three_declines_then_a_new_card_then_the_old_card_again_starts_afresh() -> None:
    past = history(D, D, D) + history(D, card=OTHER, start=date(2026, 12, 1))
    assert retry_block(past, CARD) == NONE
    past += history(D, D, start=date(2026, 12, 2))
    assert retry_block(past, CARD) == NONE  # two in a row on it since the other card
    past += history(D, start=date(2026, 12, 4))
    assert retry_block(past, CARD) == THREE


def test_history_order_does_not_matter() -> None:
    past = history(D, D, S, D, D, D)
    for _ in range(20):
        shuffled = past[:]
        random.Random(_).shuffle(shuffled)
        assert retry_block(shuffled, CARD) == THREE
    past = history(D, D, D, S)
    assert retry_block(list(reversed(past)), CARD) == NONE


def test_three_is_the_limit_and_every_block_has_words() -> None:
    assert MAX_DECLINES_IN_A_ROW == 3
    assert set(RETRY_WORDS) == set(RetryBlock) - {RetryBlock.NONE}
    assert "three times" in RETRY_WORDS[THREE]
    assert "authentication" in RETRY_WORDS[AUTH]


@given(outcomes=st.lists(st.sampled_from([S, D, E]), max_size=12))
def test_declines_stop_iff_the_last_three_non_error_outcomes_are_declines(
    outcomes: list[Outcome],
) -> None:
    counted = [o for o in outcomes if o != E]
    stop = len(counted) >= 3 and counted[-3:] == [D, D, D]
    assert retry_block(history(*outcomes), CARD) == (THREE if stop else NONE)


@given(
    before=st.lists(st.sampled_from([S, D, E, R]), max_size=10),
    other=st.lists(st.sampled_from([S, D, E, R]), min_size=1, max_size=5),
    outcomes=st.lists(st.sampled_from([S, D, E, R]), max_size=10),
)
def test_only_the_attempts_since_the_last_other_card_count(
    before: list[Outcome], other: list[Outcome], outcomes: list[Outcome]
) -> None:
    """Whatever happened on the card before another card was tried does not count."""
    past = (
        history(*before)
        + history(*other, card=OTHER, start=date(2027, 1, 1))
        + history(*outcomes, start=date(2027, 2, 1))
    )
    assert retry_block(past, CARD) == retry_block(history(*outcomes), CARD)
    if not outcomes:
        assert retry_block(past, CARD) == NONE


@given(outcomes=st.lists(st.sampled_from(list(Outcome)), max_size=10))
def test_pending_always_blocks(outcomes: list[Outcome]) -> None:
    got = retry_block(history(*outcomes), CARD)
    assert (got == PENDING) is (P in outcomes)


# --- Amount ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("amounts", "total"),
    [([], 0), ([15000], 15000), ([15000, 18000], 33000), ([0, 0], 0), ([1, 2, 3], 6)],
)
def test_charge_amount_is_the_whole_open_balance(amounts: list[int], total: int) -> None:
    assert charge_amount(amounts) == total


@pytest.mark.parametrize(
    "amounts",
    [[150.0], [15000, 0.5], [-1], [15000, -15000], [True], [Decimal(100)], ["100"], [None]],
)
def test_charge_amount_refuses_anything_but_non_negative_integer_cents(
    amounts: list[object],
) -> None:
    with pytest.raises(ValueError, match="non-negative integer cents"):
        charge_amount(amounts)  # type: ignore[arg-type]  # wrong types on purpose: they must be refused


@given(st.lists(st.integers(0, 10**9), max_size=20))
def test_charge_amount_property(amounts: list[int]) -> None:
    total = charge_amount(amounts)
    assert total == sum(amounts)
    assert isinstance(total, int)
