"""The queries of catch-up scheduling and the night ledger: which steps of which practices'
nights are recorded done, the sensor's tries and the failures runs recorded, when each
practice's first client was created. Each takes the caller's Connection and never commits."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, date, datetime

from sqlalchemy import ColumnElement, Connection, and_, func, insert, select, update

from billing_pipeline.db import models as m
from billing_pipeline.domain.schedule import STEP_RECORDS, PracticeClock, Step, Tries

ERROR_CHARS = 300  # night_step_tries.last_error


def practice_clocks(
    conn: Connection, account_ids: Iterable[str] | None = None
) -> list[PracticeClock]:
    """Every practice (or those named) with its zone and its first client's creation."""
    first = (
        select(m.Client.account_id, func.min(m.Client.created_at).label("first_at"))
        .group_by(m.Client.account_id)
        .subquery()
    )
    query = (
        select(m.Account.id, m.Account.timezone, first.c.first_at)
        .join(first, first.c.account_id == m.Account.id, isouter=True)
        .order_by(m.Account.id)
    )
    if account_ids is not None:
        query = query.where(m.Account.id.in_(list(account_ids)))
    out = []
    for account_id, tz, first_at in conn.execute(query):
        out.append(PracticeClock(account_id, tz, _aware(first_at) if first_at else None))
    return out


def done_steps(conn: Connection, since: date | None = None) -> dict[str, set[tuple[date, Step]]]:
    """{account id: {(night, step)}} of the steps whose every record is in night_steps."""
    query = select(m.NightStep.account_id, m.NightStep.night, m.NightStep.step)
    if since is not None:
        query = query.where(m.NightStep.night >= since)
    records: defaultdict[tuple[str, date], set[str]] = defaultdict(set)
    for account_id, night, record in conn.execute(query):
        records[(account_id, night)].add(record)
    out: defaultdict[str, set[tuple[date, Step]]] = defaultdict(set)
    for (account_id, night), have in records.items():
        for step, needed in STEP_RECORDS.items():
            if have.issuperset(needed):
                out[account_id].add((night, step))
    return dict(out)


def step_tries(
    conn: Connection, since: date | None = None
) -> dict[str, dict[tuple[date, Step], Tries]]:
    """{account id: {(night, step): Tries}} of the steps the sensor launched."""
    t = m.NightStepTry
    query = select(t.account_id, t.night, t.step, t.tries, t.last_launched_at, t.last_error)
    if since is not None:
        query = query.where(t.night >= since)
    out: defaultdict[str, dict[tuple[date, Step], Tries]] = defaultdict(dict)
    for account_id, night, step, tries, launched_at, error in conn.execute(query):
        out[account_id][(night, Step(step))] = Tries(tries, _aware(launched_at), error)
    return dict(out)


def _aware(at: datetime) -> datetime:
    # An aggregate of a UTC column comes back naive on SQLite.
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def _key(account_id: str, night: date, step: Step) -> ColumnElement[bool]:
    t = m.NightStepTry
    return and_(t.account_id == account_id, t.night == night, t.step == step.value)


def note_launch(
    conn: Connection, account_id: str, night: date, step: Step, at: datetime, run_key: str
) -> int:
    """One more try of the step, launched at `at`; returns the try's number."""
    t = m.NightStepTry
    tries = conn.execute(select(t.tries).where(_key(account_id, night, step))).scalar()
    if tries is None:
        conn.execute(
            insert(t).values(
                account_id=account_id,
                night=night,
                step=step.value,
                tries=1,
                last_launched_at=at,
                last_run_key=run_key,
            )
        )
        return 1
    conn.execute(
        update(t)
        .where(_key(account_id, night, step))
        .values(tries=tries + 1, last_launched_at=at, last_run_key=run_key)
    )
    return int(tries) + 1


def note_failure(
    conn: Connection, account_id: str, night: date, step: Step, error: str, at: datetime
) -> None:
    """A run's failure of the step for the practice's night (safe text: an error type or a
    SafeMessageError's message). A step run outside the sensor (a backfill) is recorded too,
    as a try, so the ledger shows it."""
    t = m.NightStepTry
    error = error[:ERROR_CHARS]
    found = conn.execute(select(t.tries).where(_key(account_id, night, step))).scalar()
    if found is None:
        conn.execute(
            insert(t).values(
                account_id=account_id,
                night=night,
                step=step.value,
                tries=1,
                last_launched_at=at,
                last_error=error,
                last_failed_at=at,
            )
        )
        return
    conn.execute(
        update(t).where(_key(account_id, night, step)).values(last_error=error, last_failed_at=at)
    )


def newest_done_nights(conn: Connection, step: Step) -> dict[str, date]:
    """{account id: the newest night whose `step` is done (every record of it)}."""
    needed = STEP_RECORDS[step]
    nights = (
        select(m.NightStep.account_id, m.NightStep.night)
        .where(m.NightStep.step.in_(needed))
        .group_by(m.NightStep.account_id, m.NightStep.night)
        .having(func.count(func.distinct(m.NightStep.step)) == len(needed))
        .subquery()
    )
    query = select(nights.c.account_id, func.max(nights.c.night)).group_by(nights.c.account_id)
    return {account_id: night for account_id, night in conn.execute(query)}
