"""The AutoPay anomaly guard's rule, without Dagster or a database: a night like the practice's
history passes; a night with every session twice (a duplicated import) is held; like is
compared with like; no history, short history and small practices are never held for being
larger than usual; one client above the cap is held whatever the history."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing_pipeline.domain.guard import (
    DEFAULT_SETTINGS,
    GuardSettings,
    HoldReason,
    NightCharges,
    NightKind,
    judge,
    median,
    night_kind,
)
from billing_pipeline.domain.settings import BillCreation

TONIGHT = date(2026, 11, 20)


def _night(
    day: date, count: int, each_cents: int = 15_000, kind: NightKind = NightKind.NIGHT
) -> NightCharges:
    return NightCharges(day, kind, count, count * each_cents, each_cents if count else 0)


def _history(nights: int, count: int = 5, each_cents: int = 15_000) -> list[NightCharges]:
    return [_night(TONIGHT - timedelta(days=i), count, each_cents) for i in range(1, nights + 1)]


def test_median_of_whole_numbers() -> None:
    assert median([3]) == 3
    assert median([5, 1, 3]) == 3
    assert median([1, 2, 3, 4]) == 2  # rounded down: cents stay whole
    with pytest.raises(ValueError):
        median([])


def test_a_normal_night_passes() -> None:
    verdict = judge(_night(TONIGHT, 6), _history(28))
    assert not verdict.held
    assert verdict.compared_nights == 28
    assert verdict.median_count == 5
    assert verdict.median_total_cents == 75_000


def test_a_duplicated_import_is_held_on_count_and_total() -> None:
    verdict = judge(_night(TONIGHT, 10), _history(28))  # every session twice
    assert verdict.held
    assert verdict.reasons == (HoldReason.TOO_MANY_CHARGES, HoldReason.TOTAL_TOO_HIGH)
    assert "10 charges" in verdict.words[0] and "median of 5" in verdict.words[0]
    assert "$1,500.00 in total" in verdict.words[1]


def test_a_duplicated_import_doubling_each_clients_amount_is_held_on_total() -> None:
    tonight = NightCharges(TONIGHT, NightKind.NIGHT, 5, 5 * 30_000, 30_000)
    verdict = judge(tonight, _history(28))
    assert verdict.reasons == (HoldReason.TOTAL_TOO_HIGH,)


@pytest.mark.parametrize("nights", [0, 1, 7])
def test_too_little_history_is_never_held_for_size(nights: int) -> None:
    verdict = judge(_night(TONIGHT, 50), _history(nights))
    assert not verdict.held
    assert verdict.median_count is None


def test_eight_comparable_nights_are_enough() -> None:
    assert judge(_night(TONIGHT, 50), _history(8)).held


def test_a_small_practice_going_from_one_charge_to_two_is_not_held() -> None:
    assert not judge(_night(TONIGHT, 2), _history(28, count=1)).held
    assert judge(_night(TONIGHT, 4), _history(28, count=1)).held  # 4x and 3 more


def test_only_the_last_window_of_comparable_nights_counts() -> None:
    old_big = [_night(TONIGHT - timedelta(days=100 + i), 40) for i in range(28)]
    verdict = judge(_night(TONIGHT, 10), old_big + _history(28))
    assert verdict.held and verdict.compared_nights == 28 and verdict.median_count == 5


def test_nights_without_charges_and_later_nights_are_not_history() -> None:
    quiet = [_night(TONIGHT - timedelta(days=40 + i), 0) for i in range(20)]
    later = [_night(TONIGHT + timedelta(days=i), 1) for i in range(1, 20)]
    verdict = judge(_night(TONIGHT, 10), quiet + later + _history(8))
    assert verdict.compared_nights == 8 and verdict.median_count == 5


def test_a_monthly_practice_compares_its_month_end_with_month_ends() -> None:
    assert night_kind(BillCreation.MONTHLY, date(2026, 11, 30)) == NightKind.MONTH_END
    assert night_kind(BillCreation.MONTHLY, date(2026, 11, 29)) == NightKind.NIGHT
    assert night_kind(BillCreation.DAILY, date(2026, 11, 30)) == NightKind.NIGHT
    month_end = date(2026, 11, 30)
    # Retries of declines on ordinary nights: one small charge each.
    retries = [_night(month_end - timedelta(days=i), 1) for i in range(1, 29)]
    ends = [
        NightCharges(
            date(2025 + (m + 2) // 12, (m + 2) % 12 + 1, 28),
            NightKind.MONTH_END,
            40,
            40 * 60_000,
            60_000,
        )
        for m in range(8)
    ]
    tonight = NightCharges(month_end, NightKind.MONTH_END, 42, 42 * 60_000, 60_000)
    verdict = judge(tonight, retries + ends)
    assert not verdict.held  # compared with month-ends, not with the retries
    assert verdict.compared_nights == 8 and verdict.median_count == 40
    doubled = NightCharges(month_end, NightKind.MONTH_END, 40, 40 * 120_000, 120_000)
    assert judge(doubled, retries + ends).reasons == (HoldReason.TOTAL_TOO_HIGH,)


def test_one_client_above_the_cap_is_held_even_without_history() -> None:
    tonight = NightCharges(TONIGHT, NightKind.NIGHT, 1, 600_000, 600_000)
    verdict = judge(tonight, [])
    assert verdict.reasons == (HoldReason.CLIENT_ABOVE_CAP,)
    assert "$6,000.00, above the cap of $5,000.00" in verdict.words[0]
    assert not judge(tonight, [], GuardSettings(client_cap_cents=1_000_000)).held


def test_thresholds_are_the_accounts() -> None:
    strict = GuardSettings(multiple_percent=120, min_nights=3, min_extra_charges=1)
    assert judge(_night(TONIGHT, 6), _history(3), strict).reasons == (HoldReason.TOO_MANY_CHARGES,)
    assert not judge(_night(TONIGHT, 6), _history(3), DEFAULT_SETTINGS).held


@given(
    counts=st.lists(st.integers(min_value=1, max_value=30), min_size=8, max_size=40),
    tonight=st.integers(min_value=1, max_value=30),
)
def test_a_held_night_is_at_least_the_multiple_of_its_median(
    counts: list[int], tonight: int
) -> None:
    history = [_night(TONIGHT - timedelta(days=i + 1), c) for i, c in enumerate(counts)]
    verdict = judge(_night(TONIGHT, tonight), history)
    assert verdict.median_count is not None
    twice_and_three_more = (
        tonight >= 2 * verdict.median_count and tonight - verdict.median_count >= 3
    )
    assert (HoldReason.TOO_MANY_CHARGES in verdict.reasons) == twice_and_three_more
