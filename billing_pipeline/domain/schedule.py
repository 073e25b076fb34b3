"""Which practices' nights a schedule tick launches.

Schedules tick every 15 minutes in UTC (every zone's offset is a multiple of 15 minutes). A
tick at T launches, for each practice, the night whose step instant falls in (T - period, T].
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, datetime, timedelta
from enum import StrEnum

from billing_pipeline.domain.calendar import AUTOPAY_OFFSET, bills_instant, local_date

TICK = timedelta(minutes=15)


class Step(StrEnum):
    """A step of a practice's night that is recorded once done (table night_steps)."""

    BILLS = "bills"  # 00:00 local: bills, superbills, statements
    AUTOPAY = "autopay"  # 00:30 local


def step_instant(night: date, tz: str, step: Step) -> datetime:
    base = bills_instant(night, tz)
    return base + AUTOPAY_OFFSET if step == Step.AUTOPAY else base


def due_nights(
    accounts: Iterable[tuple[str, str]], tick: datetime, step: Step, period: timedelta = TICK
) -> dict[date, list[str]]:
    """{night: [account ids]} whose `step` instant is in (tick - period, tick]."""
    out: dict[date, list[str]] = {}
    for account_id, tz in accounts:
        today = local_date(tick, tz)
        for night in (today - timedelta(days=2), today - timedelta(days=1), today):
            at = step_instant(night, tz, step)
            if tick - period < at <= tick:
                out.setdefault(night, []).append(account_id)
    return {night: sorted(ids) for night, ids in sorted(out.items())}
