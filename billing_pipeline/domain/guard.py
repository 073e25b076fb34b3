"""The AutoPay anomaly guard: before a practice's night is charged, compare it with the
practice's own history, and hold it when it looks wrong (a duplicated import doubling every
charge, one client charged far more than anyone should be).

Like is compared with like: a monthly practice's month-end with its earlier month-ends, every
other night with the other nights. Only nights on which AutoPay charged count as history, the
last `window_nights` of them, and nothing is held for being larger than usual until there are
`min_nights` of them, so a new practice (or a short simulation) is never held for having no
history. The per-client cap needs no history. Money is integer cents; the multiple is in
percent so that no float is involved.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from enum import StrEnum

from billing_pipeline.domain.calendar import is_month_end
from billing_pipeline.domain.money import dollars
from billing_pipeline.domain.settings import BillCreation


@dataclass(frozen=True)
class GuardSettings:
    """An account's thresholds (table `autopay_guard_settings`; these are the defaults).

    A night is held when its number of charges, or its total, is at least `multiple_percent`
    of the median of its comparable nights *and* exceeds that median by at least
    `min_extra_charges` (resp. `min_extra_cents`), so that a small practice going from one
    charge to two is not held; or when one client would be charged more than
    `client_cap_cents`."""

    multiple_percent: int = 200
    min_nights: int = 8
    window_nights: int = 28
    min_extra_charges: int = 3
    min_extra_cents: int = 50_000
    client_cap_cents: int = 500_000


DEFAULT_SETTINGS = GuardSettings()


class NightKind(StrEnum):
    NIGHT = "night"
    MONTH_END = "month_end"


def night_kind(bill_creation: BillCreation, night: date) -> NightKind:
    """A monthly practice's month-end charges the month's bills: it compares with month-ends."""
    if bill_creation == BillCreation.MONTHLY and is_month_end(night):
        return NightKind.MONTH_END
    return NightKind.NIGHT


@dataclass(frozen=True)
class NightCharges:
    """What AutoPay charges (or would charge) on one night of a practice: the number of
    charges, their total and the largest for one client, in cents."""

    night: date
    kind: NightKind
    count: int
    total_cents: int
    largest_cents: int


class HoldReason(StrEnum):
    TOO_MANY_CHARGES = "too_many_charges"
    TOTAL_TOO_HIGH = "total_too_high"
    CLIENT_ABOVE_CAP = "client_above_cap"


@dataclass(frozen=True)
class GuardVerdict:
    held: bool
    reasons: tuple[HoldReason, ...]
    compared_nights: int
    median_count: int | None  # None: not enough comparable history to compare
    median_total_cents: int | None
    words: tuple[str, ...]  # each reason for staff: counts and amounts, no names


def median(values: Sequence[int]) -> int:
    """The median of integers, rounded down to a whole number (cents, charges)."""
    ordered = sorted(values)
    n = len(ordered)
    if n == 0:
        raise ValueError("median of nothing")
    middle = n // 2
    if n % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) // 2


def comparable(
    tonight: NightCharges, history: Sequence[NightCharges], settings: GuardSettings
) -> list[NightCharges]:
    """The last `window_nights` nights before tonight of the same kind on which AutoPay
    charged anything."""
    same = sorted(
        (h for h in history if h.night < tonight.night and h.kind == tonight.kind and h.count > 0),
        key=lambda h: h.night,
    )
    return same[-settings.window_nights :] if settings.window_nights > 0 else []


def judge(
    tonight: NightCharges,
    history: Sequence[NightCharges],
    settings: GuardSettings = DEFAULT_SETTINGS,
) -> GuardVerdict:
    """Hold tonight, or let it be charged (see the module's note)."""
    reasons: list[HoldReason] = []
    words: list[str] = []
    if tonight.largest_cents > settings.client_cap_cents:
        reasons.append(HoldReason.CLIENT_ABOVE_CAP)
        words.append(
            f"one client would be charged {dollars(tonight.largest_cents)}, above the cap of "
            f"{dollars(settings.client_cap_cents)}"
        )
    past = comparable(tonight, history, settings)
    median_count = median_total = None
    if past and len(past) >= settings.min_nights:
        median_count = median([p.count for p in past])
        median_total = median([p.total_cents for p in past])
        share = f"{settings.multiple_percent}% of"
        what = "month-ends" if tonight.kind == NightKind.MONTH_END else "nights"
        if (
            tonight.count * 100 >= settings.multiple_percent * median_count
            and tonight.count - median_count >= settings.min_extra_charges
        ):
            reasons.append(HoldReason.TOO_MANY_CHARGES)
            words.append(
                f"{tonight.count} charges, at least {share} the median of {median_count} over "
                f"the last {len(past)} comparable {what}"
            )
        if (
            tonight.total_cents * 100 >= settings.multiple_percent * median_total
            and tonight.total_cents - median_total >= settings.min_extra_cents
        ):
            reasons.append(HoldReason.TOTAL_TOO_HIGH)
            words.append(
                f"{dollars(tonight.total_cents)} in total, at least {share} the median of "
                f"{dollars(median_total)} over the last {len(past)} comparable {what}"
            )
    return GuardVerdict(
        held=bool(reasons),
        reasons=tuple(reasons),
        compared_nights=len(past),
        median_count=median_count,
        median_total_cents=median_total,
        words=tuple(words),
    )
