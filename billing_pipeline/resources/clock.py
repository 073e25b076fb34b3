"""Clock: the wall clock in production, a logical clock in `simulate`.

Assets ask the clock two things: has a step's scheduled instant come for this practice, and
what time to stamp on what it does. The wall clock answers the first with the real time. The
logical clock runs every step exactly at its scheduled instant and ends the simulation at 00:00
on `until_date` in each practice's own zone. Both stamp the step's scheduled instant.
"""

from __future__ import annotations

from datetime import UTC, date, datetime

import dagster as dg
from pydantic import Field

from billing_pipeline.domain.calendar import start_of_day


class Clock(dg.ConfigurableResource):
    """The time as the pipeline sees it."""

    mode: str = Field(default="wall", description="'wall' (production) or 'logical' (simulate).")
    until_date: str | None = Field(
        default=None, description="Logical mode: the simulation ends at 00:00 on this local date."
    )

    @property
    def logical(self) -> bool:
        if self.mode not in ("wall", "logical"):
            raise ValueError(f"clock mode: {self.mode!r} is not 'wall' or 'logical'")
        return self.mode == "logical"

    def now_for(self, tz: str) -> datetime:
        """The current instant as seen by a practice in zone `tz`."""
        if self.logical and self.until_date:
            return start_of_day(date.fromisoformat(self.until_date), tz)
        return datetime.now(UTC)

    def is_due(self, scheduled_at: datetime, tz: str) -> bool:
        return scheduled_at <= self.now_for(tz)

    def stamp(self, scheduled_at: datetime) -> datetime:
        """The instant recorded on what a step makes (a bill's `created_at`, an attempt's
        `attempted_at`, a payment's `paid_at`): the step's scheduled instant, on both clocks.
        Every rule that looks across assets (AutoPay takes the bills made by its night,
        statements count a month's bills and payments, balances as of an instant) reads these
        instants, so a run that comes late, or a backfill of last month that runs every night
        in one go, does exactly what the schedule would have done on the night. When the work
        really ran is in Dagster's run history, in an attempt's `claimed_at` and in Stripe."""
        return scheduled_at
