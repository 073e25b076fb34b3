"""The evening summaries' rows: each practice's staff address and hour, and one summary per
practice and night (claimed, then marked sent; a failed send gives its claim back)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

from sqlalchemy import Connection, and_, delete, exists, insert, select, update

from billing_pipeline.db import models as m


@dataclass(frozen=True)
class StaffContact:
    account_id: str
    practice_name: str
    timezone: str
    staff_email: str
    summary_hour: int


def set_staff(conn: Connection, account_id: str, email: str, hour: int, at: datetime) -> None:
    t = m.SummaryRecipient
    values = {"staff_email": email, "summary_hour": hour, "changed_at": at}
    if not conn.execute(update(t).where(t.account_id == account_id).values(**values)).rowcount:
        conn.execute(insert(t).values(account_id=account_id, **values))


def staff_contacts(conn: Connection) -> list[StaffContact]:
    rows = conn.execute(
        select(
            m.SummaryRecipient.account_id,
            m.Account.name,
            m.Account.timezone,
            m.SummaryRecipient.staff_email,
            m.SummaryRecipient.summary_hour,
        )
        .join(m.Account, m.Account.id == m.SummaryRecipient.account_id)
        .order_by(m.SummaryRecipient.account_id)
    )
    return [StaffContact(*r) for r in rows]


def summary_made(conn: Connection, account_id: str, night: date) -> bool:
    t = m.EveningSummary
    return bool(
        conn.execute(
            select(exists().where(and_(t.account_id == account_id, t.night == night)))
        ).scalar()
    )


def claim_summary(
    conn: Connection, account_id: str, night: date, at: datetime, message_id: str
) -> bool:
    """Claim the night's summary (False: another run has it, or it was sent)."""
    if summary_made(conn, account_id, night):
        return False
    conn.execute(
        insert(m.EveningSummary).values(
            account_id=account_id, night=night, claimed_at=at, message_id=message_id
        )
    )
    return True


def mark_summary_sent(conn: Connection, account_id: str, night: date, at: datetime) -> None:
    t = m.EveningSummary
    conn.execute(
        update(t).where(and_(t.account_id == account_id, t.night == night)).values(sent_at=at)
    )


def drop_claim(conn: Connection, account_id: str, night: date) -> None:
    t = m.EveningSummary
    conn.execute(
        delete(t).where(and_(t.account_id == account_id, t.night == night, t.sent_at.is_(None)))
    )
