"""The AutoPay anomaly guard for one practice's night (domain/guard.py has the rule).

Before AutoPay claims anything for a practice's night, what it would charge (the same gates
as the claim: services/autopay_gates.py) is compared with the practice's own history. A night
outside it is held: a row in `autopay_holds`, nothing charged for that practice, the night's
AutoPay step left not done (so its bills wait to be shared, as for any AutoPay not yet run),
and the other practices go on. Staff release it (`billing-pipeline autopay release ACCOUNT
NIGHT`, who and when recorded); the next AutoPay run of the night then charges it, once.
A night on which AutoPay already charged someone was let through before: it is not judged
again (a re-run after a crash finishes it)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime

from sqlalchemy import Connection, and_, exists, select

from billing_pipeline.db import guard as q
from billing_pipeline.db import models as m
from billing_pipeline.domain.guard import GuardVerdict, NightCharges, judge, night_kind
from billing_pipeline.domain.money import dollars
from billing_pipeline.domain.practice import Practice
from billing_pipeline.services.autopay_gates import Decision, Gate, autopay_gate

HELD_BY_GUARD = "held_by_guard"


@dataclass(frozen=True)
class GuardResult:
    held: bool
    released: bool  # staff released a hold of this night: it is charged
    tonight: NightCharges
    verdict: GuardVerdict | None  # None: not judged (released, or let through before)


def tonight_charges(
    conn: Connection,
    practice: Practice,
    client_ids: Sequence[str],
    night: date,
    at: datetime,
    decisions: Mapping[str, Decision],
) -> tuple[NightCharges, list[Gate]]:
    """What AutoPay would charge tonight, client by client, on these decisions (reads only)."""
    gates = [autopay_gate(conn, c, decisions.get(c), night, at) for c in client_ids]
    amounts = [g.amount_cents for g in gates if g.stopped_by is None]
    return (
        NightCharges(
            night=night,
            kind=night_kind(practice.account.bill_creation, night),
            count=len(amounts),
            total_cents=sum(amounts),
            largest_cents=max(amounts, default=0),
        ),
        gates,
    )


def _charged_tonight(conn: Connection, account_id: str, night: date) -> bool:
    a = m.AutopayAttempt
    return bool(
        conn.execute(
            select(exists().where(and_(a.account_id == account_id, a.night == night)))
        ).scalar()
    )


def guard_night(
    conn: Connection,
    practice: Practice,
    client_ids: Sequence[str],
    night: date,
    at: datetime,
    decisions: Mapping[str, Decision],
) -> GuardResult:
    """Judge the practice's night and record a hold when it is held (see the module's note)."""
    account_id = practice.account.id
    tonight, _ = tonight_charges(conn, practice, client_ids, night, at, decisions)
    hold = q.hold_of(conn, account_id, night)
    if hold is not None:
        return GuardResult(not hold.released, hold.released, tonight, None)
    if tonight.count == 0 or _charged_tonight(conn, account_id, night):
        return GuardResult(False, False, tonight, None)
    history = q.charge_history(conn, account_id, night, practice.account.bill_creation)
    verdict = judge(tonight, history, q.guard_settings(conn, account_id))
    if verdict.held:
        q.record_hold(conn, account_id, night, tonight, verdict, datetime.now(UTC))
    return GuardResult(verdict.held, False, tonight, verdict)


def hold_words(hold: q.Hold) -> str:
    """A held night for staff: the figures and why, and who released it (ids, cents)."""
    d = hold.details
    words = "; ".join(d.get("words", [])) or ", ".join(hold.reasons)
    text = (
        f"AutoPay for practice {hold.account_id} on the night of {hold.night} was held by the "
        f"anomaly guard: {d.get('charges')} charge(s) totalling "
        f"{dollars(int(d.get('total_cents', 0)))} looked unlike its history ({words})"
    )
    if hold.released_at is not None:
        return (
            f"{text}; released by {hold.released_by} at "
            f"{hold.released_at.astimezone(UTC):%Y-%m-%d %H:%M} UTC: the night's AutoPay "
            "charges it (once) on its first run after that"
        )
    return (
        f"{text}; nothing is charged for this practice's night until staff release it "
        f"(billing-pipeline autopay release {hold.account_id} {hold.night})"
    )
