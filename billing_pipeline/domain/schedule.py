"""Which steps of which practices' nights are due, decided from what is recorded done (DESIGN
invariant 8), never from which tick happened to fire.

A practice's night has two steps, each at an instant in the practice's own zone: the 00:00
step (bills, then superbills and statements) and AutoPay at 00:30. A step is due once its
instant has passed and it is not recorded done; a practice's steps run in order (the 00:00
step of a night before its AutoPay, night N before night N+1), so at most one step of a
practice is launched at a time, the first one not done. A step whose run failed is launched
again after a backoff, a bounded number of times, then shown failed. Nights older than the
catch-up horizon are never launched on their own: they are shown missed, for an analyst to
backfill. No night before the practice's first client was created is due.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from enum import StrEnum

from billing_pipeline.domain.calendar import (
    AUTOPAY_OFFSET,
    bills_instant,
    local_date,
    require_aware,
)


class Step(StrEnum):
    """A step of a practice's night, launched as one run of its job."""

    BILLS = "bills"  # 00:00 local: bills, superbills, statements
    AUTOPAY = "autopay"  # 00:30 local


STEPS = (Step.BILLS, Step.AUTOPAY)

# What each step records in night_steps once done for a practice's night. The 00:00 step is
# done only when its three assets did the night: a run that billed and then died before the
# statements is launched again (the bills are not made twice: the session key refuses them).
STEP_RECORDS: Mapping[Step, tuple[str, ...]] = {
    Step.BILLS: ("bills", "superbills", "statements"),
    Step.AUTOPAY: ("autopay",),
}


def step_instant(night: date, tz: str, step: Step) -> datetime:
    base = bills_instant(night, tz)
    return base + AUTOPAY_OFFSET if step == Step.AUTOPAY else base


class State(StrEnum):
    """A step's state in the ledger."""

    DONE = "done"
    RUNNING = "running"  # a run for it is queued or executing
    DUE = "due"  # its instant passed; launched on this evaluation
    RETRY_WAIT = "retry_wait"  # its run failed; launched again after the backoff
    FAILED = "failed"  # its run failed every try: an operator must look
    MISSED = "missed"  # older than the horizon and not done: an analyst backfills it
    NOT_YET_DUE = "not_yet_due"


@dataclass(frozen=True)
class PracticeClock:
    """What the rule needs of a practice: its zone and when its first client was created
    (None: no client yet, nothing is due)."""

    account_id: str
    timezone: str
    first_client_at: datetime | None


@dataclass(frozen=True)
class Tries:
    """The launches of one practice's night step so far, and the last failure recorded."""

    count: int
    last_launched_at: datetime
    last_error: str | None = None


@dataclass(frozen=True)
class CatchUpPolicy:
    """How far back nights run by themselves, how often a failed step is tried, how late a
    step may be before the ledger's check fails."""

    horizon_nights: int = 7
    max_tries: int = 3
    backoff: timedelta = timedelta(minutes=10)
    overdue_after: timedelta = timedelta(hours=1)

    def retry_at(self, tries: Tries) -> datetime:
        """Exponential: the backoff after the first failed try, twice that after the second."""
        factor: int = 2 ** max(tries.count - 1, 0)
        return tries.last_launched_at + self.backoff * factor


@dataclass(frozen=True)
class StepState:
    account_id: str
    night: date
    step: Step
    state: State
    due_at: datetime
    tries: int = 0
    error: str | None = None
    overdue: bool = False


Key = tuple[str, date, Step]

NO_RUN_FINISHED = "run_ended_before_the_step_was_done"
BILLS_STEP_FAILED = "bills_step_failed"


def first_night(practice: PracticeClock) -> date | None:
    """The practice's first night: the local date its first client was created."""
    if practice.first_client_at is None:
        return None
    return local_date(practice.first_client_at, practice.timezone)


def last_ended_night(tz: str, now: datetime) -> date:
    """The newest night whose 00:00 step instant has passed at `now` in zone `tz`."""
    return local_date(now, tz) - timedelta(days=1)


def practice_states(
    practice: PracticeClock,
    done: Iterable[tuple[date, Step]],
    tries: Mapping[tuple[date, Step], Tries],
    running: Iterable[tuple[date, Step]],
    now: datetime,
    policy: CatchUpPolicy,
    *,
    with_missed: bool = True,
) -> list[StepState]:
    """Every step of the practice's nights from its first night (`with_missed`; else from
    the horizon's first night) to today's, in run order, with its state at `now`."""
    now = require_aware(now, "now")
    first = first_night(practice)
    if first is None:
        return []
    tz = practice.timezone
    last = last_ended_night(tz, now)
    horizon_start = last - timedelta(days=policy.horizon_nights - 1)
    done_set = set(done)
    running_set = set(running)
    states: list[StepState] = []
    blocked = False  # an earlier step is running or waits for its retry
    night = first if with_missed else max(first, horizon_start)
    while night <= last + timedelta(days=1):
        bills_failed = False
        for step in STEPS:
            at = step_instant(night, tz, step)
            tried = tries.get((night, step))
            count = tried.count if tried else 0
            error = tried.last_error if tried else None
            if (night, step) in done_set:
                state = State.DONE
            elif at > now:
                state = State.NOT_YET_DUE
            elif (night, step) in running_set:
                state, blocked = State.RUNNING, True
            elif night < horizon_start:
                state = State.MISSED
            elif step == Step.AUTOPAY and bills_failed:
                state, error = State.FAILED, BILLS_STEP_FAILED
            elif tried is not None and tried.count >= policy.max_tries:
                state, error = State.FAILED, error or NO_RUN_FINISHED
            elif blocked:
                # An earlier step of the practice goes first; this one waits its turn.
                state = State.RETRY_WAIT if tried else State.DUE
            elif tried is not None and now < policy.retry_at(tried):
                state, error, blocked = State.RETRY_WAIT, error or NO_RUN_FINISHED, True
            else:
                state, blocked = State.DUE, True
            if step == Step.BILLS and state == State.FAILED:
                bills_failed = True
            overdue = state not in (State.DONE, State.NOT_YET_DUE) and (
                now - at > policy.overdue_after
            )
            states.append(
                StepState(practice.account_id, night, step, state, at, count, error, overdue)
            )
        night += timedelta(days=1)
    return states


def to_launch(states: Iterable[StepState]) -> dict[tuple[date, Step], list[str]]:
    """{(night, step): [account ids]} to launch now: for each practice, its first step in run
    order that is neither done nor failed nor missed, if that step is DUE (a step running or
    waiting for its retry holds the practice's later steps back). Ordered by night, then step,
    so bills go before AutoPay and night N before N+1."""
    first: dict[str, StepState] = {}
    for s in states:
        if s.account_id in first:
            continue
        if s.state in (State.DUE, State.RUNNING, State.RETRY_WAIT):
            first[s.account_id] = s
    out: dict[tuple[date, Step], list[str]] = {}
    for s in first.values():
        if s.state == State.DUE:
            out.setdefault((s.night, s.step), []).append(s.account_id)
    order = {step: i for i, step in enumerate(STEPS)}
    return {key: sorted(out[key]) for key in sorted(out, key=lambda k: (k[0], order[k[1]]))}
