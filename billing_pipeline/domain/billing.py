"""How a night's eligible sessions become bills."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from enum import StrEnum

from billing_pipeline.domain.calendar import is_month_end
from billing_pipeline.domain.sessions import Session
from billing_pipeline.domain.settings import BillCreation


class BillStatus(StrEnum):
    OPEN = "open"
    PAID = "paid"


@dataclass(frozen=True)
class BillLine:
    session_id: str
    cpt: str
    units: int
    fee_cents: int
    modifiers: tuple[str, ...]

    @property
    def amount_cents(self) -> int:
        return self.units * self.fee_cents


@dataclass(frozen=True)
class PlannedBill:
    client_id: str
    session_ids: tuple[str, ...]
    lines: tuple[BillLine, ...]

    @property
    def amount_cents(self) -> int:
        return sum(line.amount_cents for line in self.lines)


def _lines(session: Session) -> tuple[BillLine, ...]:
    return tuple(
        BillLine(session.id, s.cpt or "", s.units, s.fee_cents, s.modifiers)
        for s in session.billable_services
    )


def bills_due(bill_creation: BillCreation, night: date) -> bool:
    """Daily practices bill every night; monthly ones on the last night of a month."""
    if bill_creation == BillCreation.DAILY:
        return True
    if bill_creation == BillCreation.MONTHLY:
        return is_month_end(night)
    return False


def plan_bills(
    bill_creation: BillCreation, night: date, eligible: Sequence[Session]
) -> list[PlannedBill]:
    """Daily: one bill per session. Monthly, at month end: one bill per client with all of
    that client's eligible sessions. Manual: none. `eligible` is already filtered."""
    if not bills_due(bill_creation, night):
        return []
    ordered = sorted(eligible, key=lambda s: (s.client_id, s.starts_at, s.id))
    if bill_creation == BillCreation.DAILY:
        return [PlannedBill(s.client_id, (s.id,), _lines(s)) for s in ordered]
    by_client: dict[str, list[Session]] = {}
    for s in ordered:
        by_client.setdefault(s.client_id, []).append(s)
    return [
        PlannedBill(
            client_id,
            tuple(s.id for s in group),
            tuple(line for s in group for line in _lines(s)),
        )
        for client_id, group in by_client.items()
    ]
