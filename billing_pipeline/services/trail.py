"""`billing-pipeline trail BILL_ID`: one bill's whole story in order, for a practice manager
and finance: the sessions and services on it, the settings in force that night and where each
came from, the Dagster runs that made and charged it, the AutoPay attempts (PaymentIntent ids,
outcomes), the payment, and each delivery with its portal shares and notification email.

Ids, amounts and instants only: no name, email, birth date or diagnosis, so the output can be
pasted into a ticket. The report's shapes (report.schema.json) are reused for the bill, the
attempts and the deliveries, so the trail can be checked against `report --json`."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select

from billing_pipeline.db import models as m
from billing_pipeline.db.report import REPORTED_OUTCOME
from billing_pipeline.db.trail import BillFacts, bill_facts
from billing_pipeline.domain import calendar as cal
from billing_pipeline.domain.money import dollars
from billing_pipeline.services.emails import message_id
from billing_pipeline.services.explain import setting_sources


class UnknownBill(LookupError):
    pass


def parse_bill_id(text: str) -> int:
    """`bill-12` (the report's id) or `12`."""
    found = re.fullmatch(r"(?:bill-)?([0-9]{1,12})", text.strip())
    if found is None:
        raise UnknownBill(f"bill_id: {text[:40]!r} is not a bill id (bill-N as in report --json)")
    return int(found.group(1))


def _iso(value: datetime | None) -> str | None:
    return cal.to_utc_iso(value) if value is not None else None


def build_trail(conn: Connection, bill_ref: str, database: str) -> dict[str, Any]:
    """The trail of bill `bill_ref` as data (`--json`). `database` is the billing database's
    fingerprint, which is part of each notification's Message-ID."""
    bill_id = parse_bill_id(bill_ref)
    facts = bill_facts(conn, bill_id)
    if facts is None:
        raise UnknownBill(f"bill_id: no bill 'bill-{bill_id}' in the billing database")
    tz = facts.timezone
    client = conn.execute(select(m.Client.__table__).where(m.Client.id == facts.client_id)).one()
    bills_at, autopay_at = cal.bills_instant(facts.night, tz), cal.autopay_instant(facts.night, tz)
    settings = [
        {
            "scope": s.scope,
            "subject_id": s.subject_id,
            "field": s.field,
            "value": s.value,
            "source": s.source,
        }
        for s in setting_sources(conn, client, facts.night, bills_at, autopay_at, tz)
    ]
    sessions: dict[str, dict[str, Any]] = {}
    for line in facts.lines:
        session = sessions.setdefault(
            line.session_id,
            {
                "session_id": line.session_id,
                "date": cal.local_date(line.session_starts_at, tz).isoformat(),
                "services": [],
            },
        )
        session["services"].append(
            {
                "cpt": line.cpt,
                "modifiers": line.modifiers,
                "units": line.units,
                "fee_cents": line.fee_cents,
                "amount_cents": line.amount_cents,
            }
        )
    attempts = [
        {
            "id": f"attempt-{a.id}",
            "client_id": facts.client_id,
            "payer": a.payer,
            "payer_id": a.payer_id,
            "night": a.night.isoformat(),
            "amount_cents": a.amount_cents,
            "attempted_at": _iso(a.attempted_at),
            "outcome": REPORTED_OUTCOME.get(a.status, a.status),
            "status": a.status,
            "failure_code": a.failure_code,
            "payment_intent_id": a.payment_intent_id,
            "completed_at": _iso(a.completed_at),
            "run_id": a.run_id,
        }
        for a in facts.attempts
    ]
    payments = [
        {
            "attempt_id": f"attempt-{a.id}",
            "amount_cents": a.paid_cents,
            "paid_at": _iso(a.paid_at),
            "payment_intent_id": a.payment_intent_id,
        }
        for a in facts.attempts
        if a.paid_cents is not None
    ]
    deliveries = [
        {
            "document_type": "bill",
            "document_id": f"bill-{facts.id}",
            "client_id": facts.client_id,
            "recipient": d.recipient,
            "recipient_id": d.recipient_id,
            "scheduled_at": _iso(d.scheduled_at),
            "waits_for_autopay": d.wait_for_autopay,
            "delivered_at": _iso(d.delivered_at),
            "bill_status_at_delivery": d.bill_status_at_delivery,
            "shares": [
                {
                    "revision": s.revision,
                    "shared_at": _iso(s.shared_at),
                    "bill_status": s.bill_status,
                }
                for s in d.shares
            ],
            "email": {
                "status": d.email_status,
                "attempts": d.email_attempts,
                "sent_at": _iso(d.email_sent_at),
                "message_id": message_id(d.id, database) if d.email_status == "sent" else None,
            },
        }
        for d in facts.deliveries
    ]
    return {
        "bill": {
            "id": f"bill-{facts.id}",
            "client_id": facts.client_id,
            "account_id": facts.account_id,
            "night": facts.night.isoformat(),
            "session_ids": list(facts.session_ids),
            "amount_cents": facts.amount_cents,
            "created_at": _iso(facts.created_at),
            "status": facts.status,
            "paid_at": _iso(facts.paid_at),
        },
        "timezone": tz,
        "sessions": list(sessions.values()),
        "settings": settings,
        "runs": [
            {"step": s.step, "completed_at": _iso(s.completed_at), "run_id": s.run_id}
            for s in facts.steps
        ],
        "autopay_attempts": attempts,
        "payments": payments,
        "deliveries": deliveries,
        "events": _events(facts),
    }


def _events(facts: BillFacts) -> list[dict[str, Any]]:
    """The story in time order: each event's instant and what happened, in ids and amounts."""
    events: list[tuple[datetime, int, str]] = []
    events.extend(
        (
            facts.created_at,
            0,
            f"bill-{facts.id} made for the night of {facts.night}: "
            f"{dollars(facts.amount_cents)} for {len(facts.session_ids)} session(s) "
            f"(run {s.run_id or 'unknown'})",
        )
        for s in facts.steps
        if s.step == "bills"
    )
    if not any(s.step == "bills" for s in facts.steps):
        events.append((facts.created_at, 0, f"bill-{facts.id} made: {dollars(facts.amount_cents)}"))
    for a in facts.attempts:
        outcome = REPORTED_OUTCOME.get(a.status, a.status)
        code = f" ({a.failure_code})" if a.failure_code else ""
        events.append(
            (
                a.attempted_at,
                1,
                f"AutoPay attempt-{a.id} for the night of {a.night}: {dollars(a.amount_cents)} "
                f"from the {a.payer.replace('_', ' ')} {a.payer_id}, PaymentIntent "
                f"{a.payment_intent_id or 'none'}: {outcome}{code} (run {a.run_id or 'unknown'})",
            )
        )
        if a.paid_cents is not None and a.paid_at is not None:
            events.append(
                (a.paid_at, 2, f"paid {dollars(a.paid_cents)} by attempt-{a.id}; bill is paid")
            )
    for d in facts.deliveries:
        for share in d.shares:
            again = " again" if share.revision else ""
            events.append(
                (
                    share.shared_at,
                    3,
                    f"shared{again} with the {d.recipient.replace('_', ' ')} {d.recipient_id} "
                    f"in the portal (bill {share.bill_status or 'status unknown'})",
                )
            )
        if d.delivered_at is None:
            events.append(
                (d.scheduled_at, 3, f"due to be shared with the {d.recipient.replace('_', ' ')}")
            )
        if d.email_sent_at is not None:
            events.append((d.email_sent_at, 4, "notification email sent"))
    events.sort(key=lambda e: (e[0], e[1]))
    return [{"at": _iso(at), "what": what} for at, _, what in events]


def render_trail(trail: dict[str, Any]) -> str:
    """The trail as text for a practice manager (times in the practice's zone)."""
    tz = trail["timezone"]
    bill = trail["bill"]

    def local(iso: str | None) -> str:
        if iso is None:
            return "-"
        return f"{datetime.fromisoformat(iso).astimezone(cal.zone(tz)):%Y-%m-%d %H:%M}"

    out = [
        f"{bill['id']}: client {bill['client_id']}, night of {bill['night']}, "
        f"{dollars(bill['amount_cents'])}, {bill['status']} (times in {tz})",
        "",
        "Sessions and services on it:",
    ]
    for s in trail["sessions"]:
        out.append(f"  {s['session_id']} on {s['date']}")
        out.extend(
            f"    {v['cpt']}{'-' + v['modifiers'] if v['modifiers'] else ''} x{v['units']} "
            f"at {dollars(v['fee_cents'])}: {dollars(v['amount_cents'])}"
            for v in s["services"]
        )
    out.append("Settings in force that night, and where each came from:")
    for st in trail["settings"]:
        value = st["value"]
        shown = ("on" if value else "off") if isinstance(value, bool) else value
        shown = "none" if shown is None else shown
        out.append(f"  {st['scope']} {st['subject_id']} {st['field']}: {shown} ({st['source']})")
    out.append("Dagster runs:")
    out.extend(
        f"  {r['step']} step done {local(r['completed_at'])}: run {r['run_id'] or 'unknown'}"
        for r in trail["runs"]
    )
    out.append("What happened, in order:")
    out.extend(f"  {local(e['at'])}  {e['what']}" for e in trail["events"])
    for d in trail["deliveries"]:
        email = d["email"]
        if email["status"] is not None:
            out.append(
                f"Notification email: {email['status']}"
                + (f", Message-ID {email['message_id']}" if email["message_id"] else "")
            )
    return "\n".join(out)
