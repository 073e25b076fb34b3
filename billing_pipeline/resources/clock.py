"""Clock: the wall clock in production, a logical clock in `simulate`.

Assets ask the clock two things: has a step's scheduled instant come for this practice, and
what time to stamp on what it does. The wall clock answers the first with the real time. The
logical clock runs every step exactly at its scheduled instant and ends the simulation at 00:00
on `until_date` in each practice's own zone. What a step makes is stamped with the step's
scheduled instant on both clocks (assets/common.py says why).
"""

from __future__ import annotations

from datetime import UTC, date, datetime

import dagster as dg
from pydantic import Field

from billing_pipeline.domain.calendar import require_aware, start_of_day


class Clock(dg.ConfigurableResource):
    """The time as the pipeline sees it."""

    mode: str = Field(default="wall", description="'wall' (production) or 'logical' (simulate).")
    until_date: str | None = Field(
        default=None, description="Logical mode: the simulation ends at 00:00 on this local date."
    )
    at: str | None = Field(
        default=None,
        description="Logical mode: the current instant (ISO 8601 with offset), the same for "
        "every zone; for replays that step the clock (tests of the catch-up sensor).",
    )

    @property
    def logical(self) -> bool:
        if self.mode not in ("wall", "logical"):
            raise ValueError(f"clock mode: {self.mode!r} is not 'wall' or 'logical'")
        return self.mode == "logical"

    def now_for(self, tz: str) -> datetime:
        """The current instant as seen by a practice in zone `tz`."""
        if self.logical and self.at:
            return require_aware(datetime.fromisoformat(self.at), "clock at")
        if self.logical and self.until_date:
            return start_of_day(date.fromisoformat(self.until_date), tz)
        return datetime.now(UTC)

    def is_due(self, scheduled_at: datetime, tz: str) -> bool:
        return scheduled_at <= self.now_for(tz)
