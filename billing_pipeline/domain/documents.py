"""Superbills and statements: which night makes them, for which month and which clients."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta

from billing_pipeline.domain.calendar import (
    is_statement_night,
    is_superbill_night,
    month_key,
    previous_month,
)
from billing_pipeline.domain.sessions import Session, sessions_in_month


def superbill_month(night: date, superbill_day_of_month: int) -> tuple[int, int] | None:
    """The month a night's superbills cover: the month before the superbill day's month,
    or None when the day after `night` is not the superbill day."""
    if not is_superbill_night(night, superbill_day_of_month):
        return None
    return previous_month(night + timedelta(days=1))


def statement_month(night: date) -> tuple[int, int] | None:
    """Statements are made at 00:00 on the 1st for the month that just ended (the night's)."""
    if not is_statement_night(night):
        return None
    return night.year, night.month


@dataclass(frozen=True)
class PlannedSuperbill:
    client_id: str
    month: str
    session_ids: tuple[str, ...]


def plan_superbills(
    sessions_by_client: Mapping[str, Sequence[Session]],
    superbills_enabled: Mapping[str, bool],
    tz: str,
    month: tuple[int, int],
) -> list[PlannedSuperbill]:
    """One superbill per client with superbills on that had attended sessions with a CPT code
    in the month, listing those sessions (whether billed or not, whatever bill creation is)."""
    year, mon = month
    planned = []
    for client_id in sorted(sessions_by_client):
        if not superbills_enabled.get(client_id, False):
            continue
        chosen = [
            s
            for s in sessions_in_month(sessions_by_client[client_id], tz, year, mon)
            if s.billable_kind
        ]
        if chosen:
            chosen.sort(key=lambda s: (s.starts_at, s.id))
            planned.append(
                PlannedSuperbill(client_id, month_key(year, mon), tuple(s.id for s in chosen))
            )
    return planned


@dataclass(frozen=True)
class StatementFacts:
    """What a client's month looked like at statement time (00:00 on the 1st)."""

    client_id: str
    bills_in_month: int
    payments_in_month: int
    open_balance_cents: int


def needs_statement(facts: StatementFacts) -> bool:
    """A statement goes to each client with a bill or a payment in the month, or a balance."""
    return facts.bills_in_month > 0 or facts.payments_in_month > 0 or facts.open_balance_cents > 0


def clients_needing_statements(facts: Iterable[StatementFacts]) -> list[str]:
    return sorted(f.client_id for f in facts if needs_statement(f))
