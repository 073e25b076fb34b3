"""Sessions, their services, and which of them a night bills or flags."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime
from enum import StrEnum

from billing_pipeline.domain.calendar import in_lookback, local_date


class SessionStatus(StrEnum):
    ATTENDED = "attended"
    CANCELLED = "cancelled"
    NO_SHOW = "no_show"


class SessionSource(StrEnum):
    NATIVE = "native"
    IMPORTED = "imported"


@dataclass(frozen=True)
class Service:
    cpt: str | None
    units: int
    fee_cents: int
    modifiers: tuple[str, ...] = ()

    @property
    def amount_cents(self) -> int:
        return self.units * self.fee_cents

    @property
    def billable(self) -> bool:
        return bool(self.cpt)


@dataclass(frozen=True)
class Session:
    id: str
    client_id: str
    starts_at: datetime
    status: SessionStatus
    source: SessionSource
    place_of_service: str | None
    services: tuple[Service, ...]

    @property
    def has_cpt(self) -> bool:
        return any(s.billable for s in self.services)

    @property
    def billable_services(self) -> tuple[Service, ...]:
        """Only services with a CPT code are billed."""
        return tuple(s for s in self.services if s.billable)

    @property
    def billable_amount_cents(self) -> int:
        return sum(s.amount_cents for s in self.billable_services)

    @property
    def billable_kind(self) -> bool:
        """Attended and with at least one CPT code: what bills and superbills are made of."""
        return self.status == SessionStatus.ATTENDED and self.has_cpt

    def local_date(self, tz: str) -> date:
        return local_date(self.starts_at, tz)


class Ineligible(StrEnum):
    NOT_ATTENDED = "not_attended"
    CLIENT_EXCLUDED = "client_auto_bill_off"
    NO_CPT = "no_cpt_code"
    AFTER_NIGHT = "after_night"
    BEYOND_LOOKBACK = "beyond_lookback"
    ALREADY_BILLED = "already_billed"


INELIGIBLE_WORDS = {
    Ineligible.NOT_ATTENDED: "the session was not attended",
    Ineligible.CLIENT_EXCLUDED: "the client is left out of automatic bills (auto_bill is off)",
    Ineligible.NO_CPT: "no service on the session has a CPT code",
    Ineligible.AFTER_NIGHT: "the session is after the night",
    Ineligible.BEYOND_LOOKBACK: "the session is more than 90 days before the night",
    Ineligible.ALREADY_BILLED: "the session is already on a bill",
}


def why_not_eligible(
    session: Session, tz: str, night: date, *, auto_bill: bool, billed: bool
) -> Ineligible | None:
    """None when the night bills this session, else the first reason it does not."""
    if session.status != SessionStatus.ATTENDED:
        return Ineligible.NOT_ATTENDED
    if not auto_bill:
        return Ineligible.CLIENT_EXCLUDED
    if not session.has_cpt:
        return Ineligible.NO_CPT
    day = session.local_date(tz)
    if day > night:
        return Ineligible.AFTER_NIGHT
    if not in_lookback(day, night):
        return Ineligible.BEYOND_LOOKBACK
    if billed:
        return Ineligible.ALREADY_BILLED
    return None


def needs_cpt_flag(session: Session, tz: str, night: date) -> bool:
    """An imported session with no CPT code that this night meets: automation leaves it out
    and staff must bill it by hand."""
    return (
        session.source == SessionSource.IMPORTED
        and not session.has_cpt
        and in_lookback(session.local_date(tz), night)
    )


def sessions_in_month(sessions: Iterable[Session], tz: str, year: int, month: int) -> list[Session]:
    out = []
    for s in sessions:
        d = s.local_date(tz)
        if d.year == year and d.month == month:
            out.append(s)
    return out
