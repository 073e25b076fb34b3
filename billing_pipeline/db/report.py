"""The report of everything the automation produced (contract: report.schema.json)."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select

from billing_pipeline.db import models as m
from billing_pipeline.db.documents import incomplete_superbills
from billing_pipeline.db.emails import email_problems
from billing_pipeline.db.store import list_accounts, load_practice
from billing_pipeline.domain.calendar import to_utc_iso
from billing_pipeline.domain.settings import settings_warnings

# An attempt whose outcome is still unknown (Stripe unreachable) reports as `error`: no money
# is known to have moved; reconciliation settles it on the next run.
REPORTED_OUTCOME = {"pending": "error"}


def _iso(value: datetime | None) -> str | None:
    return to_utc_iso(value) if value is not None else None


def build_report(conn: Connection) -> dict[str, Any]:
    bill_sessions: dict[int, list[str]] = defaultdict(list)
    for r in conn.execute(select(m.BillSession.bill_id, m.BillSession.session_id)):
        bill_sessions[r.bill_id].append(r.session_id)
    sb_sessions: dict[int, list[str]] = defaultdict(list)
    for r in conn.execute(select(m.SuperbillSession.superbill_id, m.SuperbillSession.session_id)):
        sb_sessions[r.superbill_id].append(r.session_id)
    doc_ids = {"bill": "bill-{}", "superbill": "superbill-{}", "statement": "statement-{}"}

    report: dict[str, Any] = {
        "bills": [
            {
                "id": doc_ids["bill"].format(r.id),
                "client_id": r.client_id,
                "session_ids": sorted(bill_sessions[r.id]),
                "amount_cents": r.amount_cents,
                "created_at": _iso(r.created_at),
                "status": r.status,
            }
            for r in conn.execute(select(m.Bill.__table__).order_by(m.Bill.id))
        ],
        "autopay_attempts": [
            {
                "id": f"attempt-{r.id}",
                "client_id": r.client_id,
                "payer": r.payer,
                "amount_cents": r.amount_cents,
                "attempted_at": _iso(r.attempted_at),
                "outcome": REPORTED_OUTCOME.get(r.status, r.status),
                "failure_code": r.failure_code,
            }
            for r in conn.execute(select(m.AutopayAttempt.__table__).order_by(m.AutopayAttempt.id))
        ],
        "superbills": [
            {
                "id": doc_ids["superbill"].format(r.id),
                "client_id": r.client_id,
                "month": r.month,
                "session_ids": sorted(sb_sessions[r.id]),
                "created_at": _iso(r.created_at),
            }
            for r in conn.execute(select(m.Superbill.__table__).order_by(m.Superbill.id))
        ],
        "statements": [
            {
                "id": doc_ids["statement"].format(r.id),
                "client_id": r.client_id,
                "month": r.month,
                "created_at": _iso(r.created_at),
            }
            for r in conn.execute(select(m.Statement.__table__).order_by(m.Statement.id))
        ],
        "deliveries": [
            {
                "document_type": r.document_type,
                "document_id": doc_ids[r.document_type].format(r.document_id),
                "client_id": r.client_id,
                "recipient": r.recipient,
                "scheduled_at": _iso(r.scheduled_at),
                "delivered_at": _iso(r.delivered_at),
                "bill_status_at_delivery": r.bill_status_at_delivery,
            }
            for r in conn.execute(select(m.Delivery.__table__).order_by(m.Delivery.id))
        ],
        "flags": [
            {"check": r.check, "session_id": r.session_id}
            for r in conn.execute(select(m.CheckFlag.__table__).order_by(m.CheckFlag.id))
        ],
        "warnings": report_warnings(conn),
    }
    return report


def report_warnings(conn: Connection) -> list[dict[str, Any]]:
    """The report's `warnings`: settings that work against the client, deliveries waiting for
    AutoPay, incomplete superbills and notification emails not sent (ids, never names)."""
    out: list[dict[str, Any]] = []
    for account in list_accounts(conn):
        practice = load_practice(conn, account.id)  # the settings with every change
        out.extend(
            {"code": w.code, "client_id": w.client_id, "message": w.message}
            for client in sorted(practice.clients.values(), key=lambda c: c.id)
            for w in settings_warnings(
                client_id=client.id,
                bill_creation=practice.account.bill_creation,
                account_autopay=practice.account.autopay_enabled,
                client_autopay=client.autopay_enabled,
                sharing=client.sharing,
            )
        )
    pending = conn.execute(
        select(m.Delivery.id, m.Delivery.client_id).where(
            m.Delivery.wait_for_autopay.is_(True), m.Delivery.delivered_at.is_(None)
        )
    ).all()
    out.extend(
        {
            "code": "delivery_waiting_for_autopay",
            "client_id": r.client_id,
            "message": f"delivery {r.id} waits for its night's AutoPay to run",
        }
        for r in pending
    )
    out.extend(
        {
            "code": "superbill_incomplete",
            "client_id": s.client_id,
            "superbill_id": f"superbill-{s.superbill_id}",
            "month": s.month,
            "missing": list(s.missing),
            "message": f"superbill-{s.superbill_id} ({s.month}) lacks "
            f"{', '.join(s.missing)}: it was made and marked incomplete",
        }
        for s in incomplete_superbills(conn)
    )
    out.extend(
        {
            "code": "notification_email_" + p.status,
            "client_id": p.client_id,
            "delivery_id": p.delivery_id,
            "message": (
                f"delivery {p.delivery_id}: the notification email failed after "
                f"{p.attempts} attempts ({p.last_error})"
                if p.status == "failed"
                else f"delivery {p.delivery_id}: no email address for the recipient"
            ),
        }
        for p in email_problems(conn)
    )
    return out
