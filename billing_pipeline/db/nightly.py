"""A night's writes for one account: eligible sessions, resolved settings, bills, superbills,
statements and their deliveries. Each function runs inside the caller's transaction and is
idempotent: run it twice, or beside another run, and nothing is made twice (the unique keys
refuse it and the caller retries the transaction, which then finds the work done)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime

from sqlalchemy import Connection, and_, delete, func, insert, or_, select, update

from billing_pipeline.db import models as m
from billing_pipeline.db.store import ClientView, Practice, billed_session_ids, load_sessions
from billing_pipeline.domain import calendar as cal
from billing_pipeline.domain.billing import PlannedBill, plan_bills
from billing_pipeline.domain.delivery import plan_delivery
from billing_pipeline.domain.documents import (
    StatementFacts,
    clients_needing_statements,
    plan_superbills,
    statement_month,
    superbill_month,
)
from billing_pipeline.domain.sessions import Session, needs_cpt_flag, why_not_eligible
from billing_pipeline.domain.settings import (
    AutopayDecision,
    DocumentType,
    autopay_decision,
    settings_warnings,
)

IMPORTED_MISSING_CPT = "imported_session_missing_cpt"


@dataclass
class NightFigures:
    """What one account's night did, for Dagster metadata (ids and numbers only)."""

    account_id: str
    night: date
    counts: dict[str, int] = field(default_factory=dict)
    amount_cents: int = 0
    ids: list[str] = field(default_factory=list)

    def add(self, key: str, n: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + n


def _window_sessions(conn: Connection, practice: Practice, night: date) -> list[Session]:
    tz = practice.account.timezone
    return load_sessions(
        conn,
        list(practice.clients),
        cal.start_of_day(cal.lookback_start(night), tz),
        cal.bills_instant(night, tz),
    )


def eligible_for_night(
    conn: Connection, practice: Practice, night: date
) -> tuple[list[Session], list[Session]]:
    """(sessions this night bills, imported sessions without CPT codes it flags)."""
    tz = practice.account.timezone
    sessions = _window_sessions(conn, practice, night)
    billed = billed_session_ids(conn, [s.id for s in sessions])
    eligible = [
        s
        for s in sessions
        if why_not_eligible(
            s, tz, night, auto_bill=practice.clients[s.client_id].auto_bill, billed=s.id in billed
        )
        is None
    ]
    flagged = [s for s in sessions if needs_cpt_flag(s, tz, night)]
    return eligible, flagged


def record_eligible_sessions(conn: Connection, practice: Practice, night: date) -> NightFigures:
    """Replace the night's eligible-session rows for the account and flag imported sessions
    without CPT codes (each flagged once, on the first night that meets it)."""
    account = practice.account
    figures = NightFigures(account.id, night)
    eligible, flagged = eligible_for_night(conn, practice, night)
    conn.execute(
        delete(m.EligibleSession.__table__).where(
            and_(m.EligibleSession.night == night, m.EligibleSession.account_id == account.id)
        )
    )
    if eligible:
        conn.execute(
            insert(m.EligibleSession.__table__),
            [
                {
                    "night": night,
                    "session_id": s.id,
                    "account_id": account.id,
                    "client_id": s.client_id,
                    "session_date": s.local_date(account.timezone),
                    "amount_cents": s.billable_amount_cents,
                }
                for s in eligible
            ],
        )
    known = (
        set(
            conn.execute(
                select(m.CheckFlag.session_id).where(
                    and_(
                        m.CheckFlag.check == IMPORTED_MISSING_CPT,
                        m.CheckFlag.session_id.in_([s.id for s in flagged]),
                    )
                )
            ).scalars()
        )
        if flagged
        else set()
    )
    new_flags = [s for s in flagged if s.id not in known]
    if new_flags:
        conn.execute(
            insert(m.CheckFlag.__table__),
            [
                {
                    "check": IMPORTED_MISSING_CPT,
                    "session_id": s.id,
                    "account_id": account.id,
                    "client_id": s.client_id,
                    "first_night": night,
                }
                for s in new_flags
            ],
        )
    figures.add("eligible_sessions", len(eligible))
    figures.add("imported_sessions_missing_cpt", len(flagged))
    figures.add("new_flags", len(new_flags))
    figures.amount_cents = sum(s.billable_amount_cents for s in eligible)
    figures.ids = [s.id for s in flagged]
    return figures


def decide_autopay(practice: Practice, client: ClientView, night: date) -> AutopayDecision:
    run_date = cal.local_date(
        cal.autopay_instant(night, practice.account.timezone), practice.account.timezone
    )
    contact = practice.contact_of(client)
    return autopay_decision(
        account_autopay=practice.account.autopay_enabled,
        client=client.party(),
        billing_contact=contact.party() if contact else None,
        run_date=run_date,
    )


def record_resolved_settings(conn: Connection, practice: Practice, night: date) -> NightFigures:
    """Write each client's settings as this night applies them, with AutoPay's decision."""
    account = practice.account
    figures = NightFigures(account.id, night)
    conn.execute(
        delete(m.ResolvedSettings.__table__).where(
            and_(m.ResolvedSettings.night == night, m.ResolvedSettings.account_id == account.id)
        )
    )
    rows = []
    for client in practice.clients.values():
        decision = decide_autopay(practice, client, night)
        rows.append(
            {
                "night": night,
                "client_id": client.id,
                "account_id": account.id,
                "bill_creation": account.bill_creation.value,
                "auto_bill": client.auto_bill,
                "superbills_enabled": client.superbills_enabled,
                "autopay_runs": decision.runs,
                "autopay_reason": decision.reason.value,
                "payer": decision.payer_kind,
                "payer_payment_method_id": decision.card.payment_method_id
                if decision.card
                else None,
                **client.sharing.as_dict(),
            }
        )
        figures.add(f"autopay_{decision.reason.value}")
        warnings = settings_warnings(
            client_id=client.id,
            bill_creation=account.bill_creation,
            account_autopay=account.autopay_enabled,
            client_autopay=client.autopay_enabled,
            sharing=client.sharing,
        )
        figures.add("settings_warnings", len(warnings))
        figures.ids.extend(w.client_id for w in warnings)
    if rows:
        conn.execute(insert(m.ResolvedSettings.__table__), rows)
    figures.add("clients", len(rows))
    return figures


def _queue_delivery(
    conn: Connection,
    practice: Practice,
    client: ClientView,
    kind: DocumentType,
    document_id: int,
    night: date,
    created_at: datetime,
) -> bool:
    planned = plan_delivery(
        kind,
        created_at,
        client.sharing,
        has_billing_contact=client.billing_contact_id is not None,
        autopay_at=cal.autopay_instant(night, practice.account.timezone),
    )
    if planned is None:
        return False
    conn.execute(
        insert(m.Delivery.__table__).values(
            document_type=kind.value,
            document_id=document_id,
            account_id=practice.account.id,
            client_id=client.id,
            night=night,
            recipient=planned.recipient,
            recipient_id=client.billing_contact_id or client.id,
            scheduled_at=planned.scheduled_at,
            wait_for_autopay=planned.wait_for_autopay,
        )
    )
    return True


def mark_step(
    conn: Connection, account_id: str, night: date, step: str, at: datetime, run_id: str | None
) -> None:
    exists = conn.execute(
        select(m.NightStep.step).where(
            and_(
                m.NightStep.account_id == account_id,
                m.NightStep.night == night,
                m.NightStep.step == step,
            )
        )
    ).first()
    if exists is None:
        conn.execute(
            insert(m.NightStep.__table__).values(
                account_id=account_id, night=night, step=step, completed_at=at, run_id=run_id
            )
        )


def step_done(conn: Connection, account_id: str, night: date, step: str) -> bool:
    return (
        conn.execute(
            select(m.NightStep.step).where(
                and_(
                    m.NightStep.account_id == account_id,
                    m.NightStep.night == night,
                    m.NightStep.step == step,
                )
            )
        ).first()
        is not None
    )


def _insert_bill(
    conn: Connection, practice: Practice, night: date, created_at: datetime, bill: PlannedBill
) -> int:
    bill_id = conn.execute(
        insert(m.Bill.__table__)
        .values(
            account_id=practice.account.id,
            client_id=bill.client_id,
            night=night,
            created_at=created_at,
            amount_cents=bill.amount_cents,
            status="open",
        )
        .returning(m.Bill.id)
    ).scalar_one()
    # The unique session key refuses a session that another run billed meanwhile: the
    # whole transaction rolls back and the retry finds the session billed.
    conn.execute(
        insert(m.BillSession.__table__),
        [{"session_id": sid, "bill_id": bill_id} for sid in bill.session_ids],
    )
    conn.execute(
        insert(m.BillLineRow.__table__),
        [
            {
                "bill_id": bill_id,
                "session_id": line.session_id,
                "cpt": line.cpt,
                "units": line.units,
                "fee_cents": line.fee_cents,
                "modifiers": ",".join(line.modifiers),
                "amount_cents": line.amount_cents,
            }
            for line in bill.lines
        ],
    )
    return bill_id


def create_bills(
    conn: Connection,
    practice: Practice,
    night: date,
    created_at: datetime,
    run_id: str | None = None,
) -> NightFigures:
    """Bill the night's eligible sessions (daily, or monthly at month end) and queue each
    bill's delivery in the same transaction, then mark the night's bills step done."""
    figures = NightFigures(practice.account.id, night)
    eligible, _ = eligible_for_night(conn, practice, night)
    for bill in plan_bills(practice.account.bill_creation, night, eligible):
        bill_id = _insert_bill(conn, practice, night, created_at, bill)
        figures.add("bills")
        figures.amount_cents += bill.amount_cents
        figures.ids.append(str(bill_id))
        client = practice.clients[bill.client_id]
        if _queue_delivery(conn, practice, client, DocumentType.BILL, bill_id, night, created_at):
            figures.add("deliveries_queued")
    mark_step(conn, practice.account.id, night, "bills", created_at, run_id)
    return figures


def create_superbills(
    conn: Connection, practice: Practice, night: date, created_at: datetime
) -> NightFigures:
    """On the superbill day, one superbill per client with superbills on, for last month."""
    figures = NightFigures(practice.account.id, night)
    month = superbill_month(night, practice.account.superbill_day_of_month)
    if month is None:
        return figures
    tz = practice.account.timezone
    start, end = cal.month_bounds(*month, tz)
    enabled = [c for c in practice.clients.values() if c.superbills_enabled]
    sessions = load_sessions(conn, [c.id for c in enabled], start, end)
    by_client: dict[str, list[Session]] = {}
    for s in sessions:
        by_client.setdefault(s.client_id, []).append(s)
    month_text = cal.month_key(*month)
    existing = set(
        conn.execute(
            select(m.Superbill.client_id).where(
                and_(m.Superbill.account_id == practice.account.id, m.Superbill.month == month_text)
            )
        ).scalars()
    )
    planned = plan_superbills(by_client, {c.id: c.superbills_enabled for c in enabled}, tz, month)
    for sb in planned:
        if sb.client_id in existing:
            continue
        sb_id = conn.execute(
            insert(m.Superbill.__table__)
            .values(
                account_id=practice.account.id,
                client_id=sb.client_id,
                month=sb.month,
                night=night,
                created_at=created_at,
            )
            .returning(m.Superbill.id)
        ).scalar_one()
        conn.execute(
            insert(m.SuperbillSession.__table__),
            [{"superbill_id": sb_id, "session_id": sid} for sid in sb.session_ids],
        )
        figures.add("superbills")
        figures.ids.append(str(sb_id))
        client = practice.clients[sb.client_id]
        if _queue_delivery(
            conn, practice, client, DocumentType.SUPERBILL, sb_id, night, created_at
        ):
            figures.add("deliveries_queued")
    return figures


def open_balance_at(conn: Connection, client_ids: Sequence[str], at: datetime) -> dict[str, int]:
    """Each client's open balance as it stood at instant `at`: bills made by then and not
    paid by then. Computed from history so the answer does not depend on run order."""
    rows = conn.execute(
        select(m.Bill.client_id, func.coalesce(func.sum(m.Bill.amount_cents), 0))
        .where(
            and_(
                m.Bill.client_id.in_(list(client_ids)),
                m.Bill.created_at <= at,
                or_(m.Bill.paid_at.is_(None), m.Bill.paid_at > at),
            )
        )
        .group_by(m.Bill.client_id)
    )
    return {cid: int(total) for cid, total in rows}


def _counts_in(conn: Connection, column, client_column, client_ids, start, end) -> dict[str, int]:  # type: ignore[no-untyped-def]
    rows = conn.execute(
        select(client_column, func.count())
        .where(and_(client_column.in_(list(client_ids)), column >= start, column < end))
        .group_by(client_column)
    )
    return {cid: int(n) for cid, n in rows}


def create_statements(
    conn: Connection, practice: Practice, night: date, created_at: datetime
) -> NightFigures:
    """At 00:00 on the 1st: a statement for last month for each client with a bill or a
    payment in it, or an open balance now (after this night's bills)."""
    figures = NightFigures(practice.account.id, night)
    month = statement_month(night)
    if month is None:
        return figures
    tz = practice.account.timezone
    start, end = cal.month_bounds(*month, tz)
    client_ids = list(practice.clients)
    if not client_ids:
        return figures
    bills = _counts_in(conn, m.Bill.created_at, m.Bill.client_id, client_ids, start, end)
    payments = _counts_in(conn, m.Payment.paid_at, m.Payment.client_id, client_ids, start, end)
    balances = open_balance_at(conn, client_ids, created_at)
    facts = [
        StatementFacts(cid, bills.get(cid, 0), payments.get(cid, 0), balances.get(cid, 0))
        for cid in client_ids
    ]
    month_text = cal.month_key(*month)
    existing = set(
        conn.execute(
            select(m.Statement.client_id).where(
                and_(m.Statement.account_id == practice.account.id, m.Statement.month == month_text)
            )
        ).scalars()
    )
    for client_id in clients_needing_statements(facts):
        if client_id in existing:
            continue
        st_id = conn.execute(
            insert(m.Statement.__table__)
            .values(
                account_id=practice.account.id,
                client_id=client_id,
                month=month_text,
                night=night,
                created_at=created_at,
                open_balance_cents=balances.get(client_id, 0),
            )
            .returning(m.Statement.id)
        ).scalar_one()
        figures.add("statements")
        figures.ids.append(str(st_id))
        if _queue_delivery(
            conn,
            practice,
            practice.clients[client_id],
            DocumentType.STATEMENT,
            st_id,
            night,
            created_at,
        ):
            figures.add("deliveries_queued")
    return figures


def release_deliveries(conn: Connection, account_id: str, night: date) -> NightFigures:
    """After the night's AutoPay: bills held for it may now be shared. If that AutoPay did not
    run (it failed, or was skipped), they stay held: a bill is never shared before AutoPay."""
    figures = NightFigures(account_id, night)
    if not step_done(conn, account_id, night, "autopay"):
        held = conn.execute(
            select(func.count()).where(
                and_(
                    m.Delivery.account_id == account_id,
                    m.Delivery.night == night,
                    m.Delivery.wait_for_autopay.is_(True),
                )
            )
        ).scalar_one()
        figures.add("held_autopay_not_run", int(held))
        return figures
    released = conn.execute(
        update(m.Delivery.__table__)
        .where(
            and_(
                m.Delivery.account_id == account_id,
                m.Delivery.night == night,
                m.Delivery.wait_for_autopay.is_(True),
            )
        )
        .values(wait_for_autopay=False)
    ).rowcount
    figures.add("released_after_autopay", released or 0)
    for kind, n in conn.execute(
        select(m.Delivery.document_type, func.count())
        .where(and_(m.Delivery.account_id == account_id, m.Delivery.night == night))
        .group_by(m.Delivery.document_type)
    ):
        figures.add(f"{kind}_deliveries", int(n))
    return figures
