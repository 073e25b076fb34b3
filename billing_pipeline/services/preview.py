"""`billing-pipeline preview ACCOUNT [--night D]`: what a practice's night would do, before it
happens, for a practice manager who wants to fix a setting first.

It is the real night, not a model of it: inside one database transaction that is always rolled
back, the same services the assets call run on the same rows (eligible sessions, resolved
settings, bills, superbills, statements and their deliveries, each as of its own instant),
then AutoPay's gates (services/autopay_gates.py, which the claim uses) and the anomaly guard's
rule are asked for each client with an open balance. Nothing is committed and nothing outside
is called (no Stripe, no email). Ids the night would assign are left null. On PostgreSQL a
preview advances the id sequences (a rolled-back insert does not give its id back), so the
real night's ids may skip some numbers; no row is changed.

The lists have the shapes of report.schema.json; ids, amounts and instants only."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, and_, func, select

from billing_pipeline.db import guard as guard_q
from billing_pipeline.db import models as m
from billing_pipeline.db.autopay import clients_with_open_bills, open_bills
from billing_pipeline.db.nightly import step_done
from billing_pipeline.db.store import list_accounts, load_practice
from billing_pipeline.domain import calendar as cal
from billing_pipeline.domain.guard import judge
from billing_pipeline.domain.money import dollars
from billing_pipeline.domain.practice import Practice
from billing_pipeline.domain.schedule import Step
from billing_pipeline.services.autopay_gates import computed_decisions
from billing_pipeline.services.guard import tonight_charges
from billing_pipeline.services.nightly import (
    NightFigures,
    create_bills,
    create_statements,
    create_superbills,
    record_eligible_sessions,
    record_resolved_settings,
)


class UnknownAccount(LookupError):
    pass


def coming_night(tz: str, now: datetime) -> date:
    """The night whose bills the practice's next midnight makes: today, in its zone."""
    return cal.local_date(now, tz)


def _iso(value: datetime | None) -> str | None:
    return cal.to_utc_iso(value) if value is not None else None


NightStep = Callable[[Connection, Practice, date, datetime], NightFigures]


def _made(conn: Connection, model: Any, account_id: str, night: date) -> list[Any]:
    """The rows of `model` (a night's table) that the practice's night made, by id."""
    return list(
        conn.execute(
            select(model.__table__)
            .where(and_(model.account_id == account_id, model.night == night))
            .order_by(model.id)
        ).all()
    )


def _session_ids(
    conn: Connection, owner: Any, session: Any, rows: Sequence[Any]
) -> dict[int, list[str]]:
    """Session ids per document id, from a link table (`owner`, `session` columns)."""
    out: dict[int, list[str]] = {}
    if rows:
        for owner_id, session_id in conn.execute(
            select(owner, session).where(owner.in_([r.id for r in rows]))
        ):
            out.setdefault(owner_id, []).append(session_id)
    return out


def _night_rows(conn: Connection, account_id: str, night: date) -> dict[str, Any]:
    """What the practice's night made (bills, superbills, statements, deliveries) with the
    AutoPay attempts of the night, in the report's shapes with our ids left null."""
    bills = _made(conn, m.Bill, account_id, night)
    sessions = _session_ids(conn, m.BillSession.bill_id, m.BillSession.session_id, bills)
    superbills = _made(conn, m.Superbill, account_id, night)
    sb_sessions = _session_ids(
        conn, m.SuperbillSession.superbill_id, m.SuperbillSession.session_id, superbills
    )
    statements = _made(conn, m.Statement, account_id, night)
    deliveries = _made(conn, m.Delivery, account_id, night)
    return {
        "bills": [
            {
                "id": None,
                "client_id": b.client_id,
                "session_ids": sorted(sessions.get(b.id, [])),
                "amount_cents": b.amount_cents,
                "created_at": _iso(b.created_at),
                "status": b.status,
            }
            for b in bills
        ],
        "superbills": [
            {
                "id": None,
                "client_id": s.client_id,
                "month": s.month,
                "session_ids": sorted(sb_sessions.get(s.id, [])),
                "created_at": _iso(s.created_at),
            }
            for s in superbills
        ],
        "statements": [
            {
                "id": None,
                "client_id": s.client_id,
                "month": s.month,
                "created_at": _iso(s.created_at),
            }
            for s in statements
        ],
        "deliveries": [
            {
                "document_type": d.document_type,
                "document_id": None,
                "client_id": d.client_id,
                "recipient": d.recipient,
                "scheduled_at": _iso(d.scheduled_at),
                "delivered_at": None,
                "bill_status_at_delivery": None,
                "waits_for_autopay": d.wait_for_autopay,
            }
            for d in deliveries
        ],
    }


def _autopay(
    conn: Connection, account_id: str, night: date, tz: str
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """AutoPay's attempts of the night as its gates decide them now (no Stripe), and the
    anomaly guard's verdict on them."""
    at = cal.autopay_instant(night, tz)
    practice = load_practice(conn, account_id, at)  # as of the night's 00:30
    candidates = clients_with_open_bills(conn, account_id, at)
    decisions = computed_decisions(practice, night)
    tonight, gates = tonight_charges(conn, practice, candidates, night, at, decisions)

    def open_cents(client_id: str) -> int:
        return sum(b.amount_cents for b in open_bills(conn, client_id, at) if b.amount_cents > 0)

    attempts = [
        {
            "client_id": g.client_id,
            "payer": g.decision.payer if g.decision else None,
            # What is charged; for a client a gate stops, the open balance it leaves.
            "amount_cents": g.amount_cents if g.stopped_by is None else open_cents(g.client_id),
            "attempted_at": _iso(at),
            "outcome": None,  # unknown until Stripe answers
            "failure_code": None,
            "charged": g.stopped_by is None,
            "stopped_by": g.stopped_by,
        }
        for g in gates
    ]
    hold = guard_q.hold_of(conn, account_id, night)
    history = guard_q.charge_history(conn, account_id, night, practice.account.bill_creation)
    verdict = judge(tonight, history, guard_q.guard_settings(conn, account_id))
    guard = {
        "would_hold": verdict.held and (hold is None or not hold.released),
        "reasons": [r.value for r in verdict.reasons],
        "words": list(verdict.words),
        "compared_nights": verdict.compared_nights,
        "median_charges": verdict.median_count,
        "median_total_cents": verdict.median_total_cents,
        "released": bool(hold and hold.released),
    }
    return attempts, guard


def _figures(night_rows: dict[str, Any], attempts: list[dict[str, Any]]) -> dict[str, int]:
    charged = [a for a in attempts if a.get("charged", True)]
    return {
        "bills": len(night_rows["bills"]),
        "bills_cents": sum(b["amount_cents"] for b in night_rows["bills"]),
        "superbills": len(night_rows["superbills"]),
        "statements": len(night_rows["statements"]),
        "deliveries": len(night_rows["deliveries"]),
        "autopay_charges": len(charged),
        "autopay_cents": sum(a["amount_cents"] for a in charged),
    }


def _previous_night(conn: Connection, account_id: str, night: date) -> dict[str, int]:
    """What the night before actually made and charged, for the diff."""
    rows = _night_rows(conn, account_id, night)
    a = m.AutopayAttempt
    count, cents = conn.execute(
        select(func.count(), func.coalesce(func.sum(a.amount_cents), 0)).where(
            and_(a.account_id == account_id, a.night == night)
        )
    ).one()
    out = _figures(rows, [])
    out["autopay_charges"], out["autopay_cents"] = int(count), int(cents)
    return out


def build_preview(
    engine: Engine, account_id: str, night: date | None, now: datetime
) -> dict[str, Any]:
    """The preview of `account_id`'s night (default: the coming one). Writes nothing."""
    with engine.connect() as conn:
        accounts = list_accounts(conn, [account_id])
        if not accounts:
            raise UnknownAccount(f"account_id: no account {account_id!r} in the billing database")
        tz = accounts[0].timezone
        night = night or coming_night(tz, now)
        bills_at = cal.bills_instant(night, tz)
        already = step_done(conn, account_id, night, Step.BILLS)
        previous = _previous_night(conn, account_id, night - timedelta(days=1))
        try:
            if not already:
                # The night's 00:00 steps in the assets' order, each with the practice as
                # of 00:00 (eligible_sessions -> resolved_settings -> bills, superbills,
                # statements).
                steps: list[NightStep] = [
                    lambda c, p, n, _at: record_eligible_sessions(c, p, n),
                    lambda c, p, n, _at: record_resolved_settings(c, p, n),
                    create_bills,
                    create_superbills,
                    create_statements,
                ]
                for step in steps:
                    step(conn, load_practice(conn, account_id, bills_at), night, bills_at)
            rows = _night_rows(conn, account_id, night)
            attempts, guard = _autopay(conn, account_id, night, tz)
        finally:
            conn.rollback()  # a preview writes nothing, whatever happened
    figures = _figures(rows, attempts)
    return {
        "account_id": account_id,
        "night": night.isoformat(),
        "timezone": tz,
        "bills_at": _iso(bills_at),
        "autopay_at": _iso(cal.autopay_instant(night, tz)),
        "already_ran": already,
        **rows,
        "autopay_attempts": attempts,
        "guard": guard,
        "figures": figures,
        "previous_night": {"night": (night - timedelta(days=1)).isoformat(), **previous},
        "diff": {k: figures[k] - previous.get(k, 0) for k in figures},
    }


def render_preview(p: dict[str, Any]) -> str:
    """The preview as text for a practice manager (times in the practice's zone)."""
    tz = p["timezone"]

    def local(iso: str | None) -> str:
        if iso is None:
            return "-"
        return f"{datetime.fromisoformat(iso).astimezone(cal.zone(tz)):%Y-%m-%d %H:%M}"

    f, prev = p["figures"], p["previous_night"]
    out = [
        f"Preview of practice {p['account_id']}, night of {p['night']} (times in {tz}; "
        f"bills at {local(p['bills_at'])}, AutoPay at {local(p['autopay_at'])}). Nothing was "
        "written and nothing was charged.",
    ]
    if p["already_ran"]:
        out.append("This night's bills were already made: shown as they were made.")
    out.append(f"Bills to be made: {f['bills']} for {dollars(f['bills_cents'])}")
    out.extend(
        f"  client {b['client_id']}: {dollars(b['amount_cents'])} for {', '.join(b['session_ids'])}"
        for b in p["bills"]
    )
    out.append(f"Superbills due: {f['superbills']}")
    out.extend(f"  client {s['client_id']} for {s['month']}" for s in p["superbills"])
    out.append(f"Statements due: {f['statements']}")
    out.extend(f"  client {s['client_id']} for {s['month']}" for s in p["statements"])
    out.append(f"AutoPay: {f['autopay_charges']} charge(s) for {dollars(f['autopay_cents'])}")
    for a in p["autopay_attempts"]:
        if a["charged"]:
            out.append(
                f"  client {a['client_id']}: {dollars(a['amount_cents'])} from the "
                f"{a['payer'].replace('_', ' ')}"
            )
        else:
            out.append(
                f"  client {a['client_id']}: not charged ({a['stopped_by']}), open "
                f"{dollars(a['amount_cents'])}"
            )
    g = p["guard"]
    if g["would_hold"]:
        out.append("  The anomaly guard would hold this night: " + "; ".join(g["words"]))
    elif g["median_charges"] is None:
        out.append(
            f"  The anomaly guard has {g['compared_nights']} comparable night(s) of history: "
            "too few to compare (it holds only on a client above the cap)"
        )
    else:
        out.append(
            f"  The anomaly guard would let it through (median of {g['median_charges']} "
            f"charge(s), {dollars(g['median_total_cents'])}, over {g['compared_nights']} nights)"
        )
    out.append(f"Documents to be shared: {f['deliveries']}")
    out.extend(
        f"  {d['document_type']} for client {d['client_id']} to the "
        f"{d['recipient'].replace('_', ' ')} at {local(d['scheduled_at'])}"
        + (" (after AutoPay)" if d["waits_for_autopay"] else "")
        for d in p["deliveries"]
    )
    out.append(f"Against the night of {prev['night']}:")
    for key, delta in p["diff"].items():
        shown = dollars if key.endswith("_cents") else str
        out.append(f"  {key}: {shown(f[key])} ({'+' if delta >= 0 else ''}{shown(delta)})")
    return "\n".join(out)
