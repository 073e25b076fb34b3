"""The AutoPay anomaly guard's rows: an account's thresholds, the charge history it compares
with (per night: number of attempts, their total, the largest for one client) and the nights
it held, with who released them and when. Counts, cents and ids only."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import Connection, and_, func, insert, select, update

from billing_pipeline.db import models as m
from billing_pipeline.domain.guard import (
    DEFAULT_SETTINGS,
    GuardSettings,
    GuardVerdict,
    NightCharges,
    night_kind,
)
from billing_pipeline.domain.settings import BillCreation

SETTING_FIELDS = (
    "multiple_percent",
    "min_nights",
    "window_nights",
    "min_extra_charges",
    "min_extra_cents",
    "client_cap_cents",
)


def guard_settings(conn: Connection, account_id: str) -> GuardSettings:
    row = conn.execute(
        select(m.AutopayGuardSettings.__table__).where(
            m.AutopayGuardSettings.account_id == account_id
        )
    ).first()
    if row is None:
        return DEFAULT_SETTINGS
    return GuardSettings(**{f: getattr(row, f) for f in SETTING_FIELDS})


def set_guard_settings(
    conn: Connection, account_id: str, settings: GuardSettings, by: str, at: datetime
) -> None:
    values = {f: getattr(settings, f) for f in SETTING_FIELDS}
    t = m.AutopayGuardSettings
    changed = conn.execute(
        update(t).where(t.account_id == account_id).values(**values, changed_at=at, changed_by=by)
    ).rowcount
    if not changed:
        conn.execute(
            insert(t).values(account_id=account_id, **values, changed_at=at, changed_by=by)
        )


def charge_history(
    conn: Connection, account_id: str, before: date, bill_creation: BillCreation
) -> list[NightCharges]:
    """Per night before `before`, what AutoPay attempted for the practice (every attempt
    counts: the guard is about what was asked of the cards, not what they paid). Each night's
    kind is judged with the practice's bill creation of tonight."""
    a = m.AutopayAttempt
    per_client = (
        select(a.night, a.client_id, func.sum(a.amount_cents).label("cents"))
        .where(and_(a.account_id == account_id, a.night < before))
        .group_by(a.night, a.client_id)
        .subquery()
    )
    rows = conn.execute(
        select(
            per_client.c.night,
            func.count().label("clients"),
            func.sum(per_client.c.cents).label("total"),
            func.max(per_client.c.cents).label("largest"),
        ).group_by(per_client.c.night)
    )
    return [
        NightCharges(
            night=r.night,
            kind=night_kind(bill_creation, r.night),
            count=int(r.clients),
            total_cents=int(r.total),
            largest_cents=int(r.largest),
        )
        for r in rows
    ]


@dataclass(frozen=True)
class Hold:
    account_id: str
    night: date
    held_at: datetime
    reasons: tuple[str, ...]
    details: dict[str, Any]
    released_at: datetime | None
    released_by: str | None

    @property
    def released(self) -> bool:
        return self.released_at is not None


def _hold(row: Any) -> Hold:
    return Hold(
        row.account_id,
        row.night,
        row.held_at,
        tuple(r for r in row.reasons.split(",") if r),
        json.loads(row.details),
        row.released_at,
        row.released_by,
    )


def hold_of(conn: Connection, account_id: str, night: date) -> Hold | None:
    t = m.AutopayHold
    row = conn.execute(
        select(t.__table__).where(and_(t.account_id == account_id, t.night == night))
    ).first()
    return _hold(row) if row is not None else None


def holds(conn: Connection, account_ids: list[str] | None = None) -> list[Hold]:
    t = m.AutopayHold
    query = select(t.__table__).order_by(t.night, t.account_id)
    if account_ids is not None:
        query = query.where(t.account_id.in_(account_ids))
    return [_hold(r) for r in conn.execute(query)]


def record_hold(
    conn: Connection,
    account_id: str,
    night: date,
    tonight: NightCharges,
    verdict: GuardVerdict,
    at: datetime,
) -> None:
    """Record that the night is held (once: a later run of a held night finds it held)."""
    if hold_of(conn, account_id, night) is not None:
        return
    details = {
        "charges": tonight.count,
        "total_cents": tonight.total_cents,
        "largest_cents": tonight.largest_cents,
        "kind": tonight.kind.value,
        "compared_nights": verdict.compared_nights,
        "median_charges": verdict.median_count,
        "median_total_cents": verdict.median_total_cents,
        "words": list(verdict.words),
    }
    conn.execute(
        insert(m.AutopayHold).values(
            account_id=account_id,
            night=night,
            held_at=at,
            reasons=",".join(r.value for r in verdict.reasons),
            details=json.dumps(details),
        )
    )


def release_hold(conn: Connection, account_id: str, night: date, by: str, at: datetime) -> bool:
    """Release a held night (once); False when there is no unreleased hold for it."""
    t = m.AutopayHold
    released = conn.execute(
        update(t)
        .where(and_(t.account_id == account_id, t.night == night, t.released_at.is_(None)))
        .values(released_at=at, released_by=by)
    ).rowcount
    return bool(released)
