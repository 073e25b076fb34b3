"""When a practice's evening summary (the preview of its coming night) is due."""

from __future__ import annotations

from datetime import date, datetime

from billing_pipeline.domain.calendar import require_aware, zone


def evening_night(now: datetime, tz: str, summary_hour: int) -> date | None:
    """The night whose summary is due at `now`: today in the practice's zone once its local
    hour has come (its bills are made at the coming midnight); None before that hour."""
    local = require_aware(now, "now").astimezone(zone(tz))
    return local.date() if local.hour >= summary_hour else None
