"""Catch-up: the state of every practice's night steps, read from the database, for the
`launch_due_nights` sensor (what to launch) and the `night_ledger` (what finance reads)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import date, datetime, timedelta

from sqlalchemy import Connection

from billing_pipeline.db.catchup import done_steps, note_launch, practice_clocks, step_tries
from billing_pipeline.domain.schedule import CatchUpPolicy, Step, StepState, practice_states

Running = Mapping[str, Iterable[tuple[date, Step]]]


def night_states(
    conn: Connection,
    now: datetime,
    policy: CatchUpPolicy,
    running: Running,
    *,
    with_missed: bool,
) -> list[StepState]:
    """Every practice's night steps with their state at `now`, practice by practice in run
    order: from the horizon's first night (`with_missed` False: what the sensor needs), or from
    each practice's first night (the ledger, which shows the missed nights)."""
    since = None
    if not with_missed:
        # Two days of slack: a zone's local date is within a day of UTC's.
        since = now.date() - timedelta(days=policy.horizon_nights + 2)
    done = done_steps(conn, since)
    tries = step_tries(conn, since)
    states: list[StepState] = []
    for practice in practice_clocks(conn):
        states.extend(
            practice_states(
                practice,
                done.get(practice.account_id, ()),
                tries.get(practice.account_id, {}),
                running.get(practice.account_id, ()),
                now,
                policy,
                with_missed=with_missed,
            )
        )
    return states


def record_launch(
    conn: Connection, *, ids: Iterable[str], night: date, step: Step, at: datetime, key: str
) -> int:
    """Count one more try for each practice's step; returns the highest try number."""
    return max((note_launch(conn, a, night, step, at, key) for a in ids), default=0)
