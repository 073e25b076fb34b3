"""How far behind its schedule a practice's data is: the newest night whose step is done
against the newest night whose step time has come, in the practice's own zone.

Dagster's freshness policies judge the wall time of an asset's last materialisation, so a
backfill of an old month (or the demo's replay of last month) reads as fresh while the newest
night done is weeks old. This rule reads the nights themselves.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from billing_pipeline.domain.calendar import local_date, require_aware
from billing_pipeline.domain.schedule import PracticeClock, Step, first_night, step_instant

# A step may take this long after its instant before its night counts as late (as the ledger).
GRACE = timedelta(hours=1)


@dataclass(frozen=True)
class NightLag:
    """A practice whose newest night done for a step is behind its schedule."""

    account_id: str
    step: Step
    newest_done: date | None  # None: no night done yet
    newest_due: date  # the newest night whose step time has come
    nights_behind: int

    def describe(self) -> str:
        done = self.newest_done.isoformat() if self.newest_done else "none yet"
        return (
            f"{self.account_id}: newest night done {done}, due {self.newest_due.isoformat()} "
            f"({self.nights_behind} night(s) behind)"
        )


def newest_due_night(tz: str, step: Step, now: datetime) -> date:
    """The newest night whose `step` instant (00:00 or 00:30 after it, local) has passed."""
    require_aware(now, "now")
    night = local_date(now, tz) - timedelta(days=1)
    while step_instant(night, tz, step) > now:
        night -= timedelta(days=1)
    return night


def lag(
    practice: PracticeClock, step: Step, done_nights: Iterable[date], now: datetime
) -> NightLag | None:
    """The practice's lag for `step`, or None when it is on time: the night after its newest
    done night is not due yet, or due less than `GRACE` ago. A practice with no client yet is
    on time (nothing of it is due)."""
    first = first_night(practice)
    if first is None:
        return None
    due = newest_due_night(practice.timezone, step, now)
    if due < first:
        return None
    newest = max(done_nights, default=None)
    following = newest + timedelta(days=1) if newest else first
    if following > due or step_instant(following, practice.timezone, step) + GRACE > now:
        return None
    behind = (due - newest).days if newest else (due - first).days + 1
    return NightLag(practice.account_id, step, newest, due, behind)
