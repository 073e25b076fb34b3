"""What a bill, superbill or statement shows, read from the billing database, and the PDFs
stored content-addressed (document_files, by SHA-256; documents, by content key).

A document is made "as of" an instant: a bill is PAID when its payment came by then (a shared
bill: its share's instant), a superbill's lines show what was paid by then.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime

from sqlalchemy import Connection, and_, insert, select, update

from billing_pipeline.db import models as m
from billing_pipeline.db.store import services_at
from billing_pipeline.domain.calendar import local_date, month_bounds
from billing_pipeline.domain.document_views import (
    ClientFacts,
    DocumentView,
    LedgerEvent,
    PracticeFacts,
    ProviderFacts,
    ServiceFacts,
    bill_number,
    bill_view,
    content_key,
    letter_diagnoses,
    missing_superbill_fields,
    statement_view,
    superbill_view,
)

KINDS = ("bill", "superbill", "statement")


def _practice(conn: Connection, account_id: str) -> tuple[PracticeFacts, ProviderFacts, str]:
    a = conn.execute(select(m.Account.__table__).where(m.Account.id == account_id)).one()
    return (
        PracticeFacts(name=a.name, npi=a.npi, tax_id=a.tax_id, address=a.address, phone=a.phone),
        ProviderFacts(
            name=a.provider_name,
            credentials=a.provider_credentials,
            npi=a.provider_npi,
            license_number=a.provider_license_number,
        ),
        a.timezone,
    )


def _client(conn: Connection, client_id: str) -> ClientFacts:
    c = conn.execute(select(m.Client.__table__).where(m.Client.id == client_id)).one()
    return ClientFacts(
        id=c.id,
        name=c.name,
        date_of_birth=c.date_of_birth,
        address=c.address,
        insurance_member_id=c.insurance_member_id,
    )


def _diagnoses(conn: Connection, client_id: str) -> list[str]:
    return list(
        conn.execute(
            select(m.Diagnosis.icd10_code)
            .where(m.Diagnosis.client_id == client_id)
            .order_by(m.Diagnosis.position)
        ).scalars()
    )


def _paid_bills(conn: Connection, bill_ids: set[int], as_of: datetime) -> set[int]:
    if not bill_ids:
        return set()
    return {
        r.id
        for r in conn.execute(
            select(m.Bill.id, m.Bill.paid_at).where(m.Bill.id.in_(sorted(bill_ids)))
        )
        if r.paid_at is not None and r.paid_at <= as_of
    }


def bill_document(conn: Connection, bill_id: int, as_of: datetime) -> DocumentView:
    bill = conn.execute(select(m.Bill.__table__).where(m.Bill.id == bill_id)).one()
    practice, _provider, tz = _practice(conn, bill.account_id)
    services = [
        ServiceFacts(
            service_date=local_date(r.starts_at, tz),
            cpt=r.cpt,
            units=r.units,
            fee_cents=r.fee_cents,
            modifiers=r.modifiers or "",
            place_of_service=r.place_of_service,
        )
        for r in conn.execute(
            select(m.BillLineRow.__table__, m.SessionRow.starts_at, m.SessionRow.place_of_service)
            .join(m.SessionRow, m.SessionRow.id == m.BillLineRow.session_id)
            .where(m.BillLineRow.bill_id == bill_id)
        )
    ]
    paid = bill.paid_at is not None and bill.paid_at <= as_of
    return bill_view(
        practice,
        _client(conn, bill.client_id),
        bill.id,
        local_date(bill.created_at, tz),
        services,
        paid=paid,
    )


def superbill_document(conn: Connection, superbill_id: int, as_of: datetime) -> DocumentView:
    sb = conn.execute(select(m.Superbill.__table__).where(m.Superbill.id == superbill_id)).one()
    practice, provider, tz = _practice(conn, sb.account_id)
    sessions = conn.execute(
        select(
            m.SessionRow.id,
            m.SessionRow.starts_at,
            m.SessionRow.place_of_service,
            m.BillSession.bill_id,
        )
        .join(m.SuperbillSession, m.SuperbillSession.session_id == m.SessionRow.id)
        .outerjoin(m.BillSession, m.BillSession.session_id == m.SessionRow.id)
        .where(m.SuperbillSession.superbill_id == superbill_id)
        .order_by(m.SessionRow.starts_at, m.SessionRow.id)
    ).all()
    # The services as the superbill read them at its creation (a later change does not
    # rewrite a superbill already made).
    in_force = services_at(conn, [r.id for r in sessions], sb.created_at)
    paid = _paid_bills(conn, {r.bill_id for r in sessions if r.bill_id is not None}, as_of)
    services = [
        ServiceFacts(
            service_date=local_date(r.starts_at, tz),
            cpt=service.cpt,
            units=service.units,
            fee_cents=service.fee_cents,
            modifiers=",".join(service.modifiers),
            place_of_service=r.place_of_service,
            paid=r.bill_id in paid,
        )
        for r in sessions
        for service in in_force[r.id]
        if service.cpt is not None
    ]
    return superbill_view(
        practice,
        provider,
        _client(conn, sb.client_id),
        sb.id,
        sb.month,
        local_date(sb.created_at, tz),
        _diagnoses(conn, sb.client_id),
        services,
    )


def statement_document(conn: Connection, statement_id: int, as_of: datetime) -> DocumentView:
    """The statement's month as it stood at the statement's creation (00:00 on the 1st):
    bills made and payments received in the month (`as_of` does not move it)."""
    st = conn.execute(select(m.Statement.__table__).where(m.Statement.id == statement_id)).one()
    practice, _provider, tz = _practice(conn, st.account_id)
    year, mon = (int(p) for p in st.month.split("-"))
    start, end = month_bounds(year, mon, tz)
    end = min(end, st.created_at)
    bills = conn.execute(
        select(m.Bill.id, m.Bill.created_at, m.Bill.amount_cents, m.Bill.paid_at).where(
            m.Bill.client_id == st.client_id
        )
    ).all()
    # Opening balance: bills made before the month and not paid before it.
    opening = sum(
        b.amount_cents
        for b in bills
        if b.created_at < start and (b.paid_at is None or b.paid_at >= start)
    )
    events = [
        LedgerEvent(local_date(b.created_at, tz), f"Bill {bill_number(b.id)}", b.amount_cents)
        for b in bills
        if start <= b.created_at < end
    ]
    events.extend(
        LedgerEvent(local_date(p.paid_at, tz), "Payment (AutoPay)", -p.amount_cents)
        for p in conn.execute(
            select(m.Payment.paid_at, m.Payment.amount_cents).where(
                and_(
                    m.Payment.client_id == st.client_id,
                    m.Payment.paid_at >= start,
                    m.Payment.paid_at < end,
                )
            )
        )
    )
    return statement_view(
        practice,
        _client(conn, st.client_id),
        st.id,
        st.month,
        local_date(st.created_at, tz),
        opening,
        events,
    )


LOADERS: dict[str, Callable[[Connection, int, datetime], DocumentView]] = {
    "bill": bill_document,
    "superbill": superbill_document,
    "statement": statement_document,
}


def document_view(conn: Connection, kind: str, document_id: int, as_of: datetime) -> DocumentView:
    return LOADERS[kind](conn, document_id, as_of)


@dataclass(frozen=True)
class IncompleteSuperbill:
    superbill_id: int
    client_id: str
    month: str
    missing: tuple[str, ...]


def incomplete_superbills(conn: Connection) -> list[IncompleteSuperbill]:
    """Superbills lacking a field an insurer needs (no NPI, no diagnosis, no date of birth...),
    decided from the facts alone: nothing is rendered to find them."""
    out = []
    accounts: dict[str, tuple[PracticeFacts, ProviderFacts, str]] = {}
    for sb in conn.execute(
        select(
            m.Superbill.id, m.Superbill.account_id, m.Superbill.client_id, m.Superbill.month
        ).order_by(m.Superbill.id)
    ):
        if sb.account_id not in accounts:
            accounts[sb.account_id] = _practice(conn, sb.account_id)
        practice, provider, _tz = accounts[sb.account_id]
        missing = missing_superbill_fields(
            practice,
            provider,
            _client(conn, sb.client_id),
            letter_diagnoses(_diagnoses(conn, sb.client_id)),
        )
        if missing:
            out.append(IncompleteSuperbill(sb.id, sb.client_id, sb.month, missing))
    return out


# --- Stored PDFs -------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredDocument:
    document_type: str
    document_id: int
    content_key: str
    sha256: str
    byte_size: int


def find_rendering(
    conn: Connection, kind: str, document_id: int, key: str
) -> StoredDocument | None:
    row = conn.execute(
        select(m.Document.__table__).where(
            and_(
                m.Document.document_type == kind,
                m.Document.document_id == document_id,
                m.Document.content_key == key,
            )
        )
    ).first()
    if row is None:
        return None
    return StoredDocument(kind, document_id, key, row.content_sha256, row.byte_size)


def store_rendering(
    conn: Connection,
    view: DocumentView,
    document_id: int,
    key: str,
    pdf: bytes,
    rendered_at: datetime | None = None,
) -> StoredDocument:
    """Keep a PDF once by its SHA-256 and record it as the rendering of the document's content
    `key`; a rendering recorded meanwhile by another run wins (the same content either way)."""
    at = rendered_at or datetime.now(UTC)
    sha = hashlib.sha256(pdf).hexdigest()
    if (
        conn.execute(select(m.DocumentFile.sha256).where(m.DocumentFile.sha256 == sha)).first()
        is None
    ):
        conn.execute(
            insert(m.DocumentFile).values(
                sha256=sha, content=pdf, byte_size=len(pdf), created_at=at
            )
        )
    existing = find_rendering(conn, view.kind, document_id, key)
    if existing is not None:
        return existing
    missing = getattr(view, "missing", ())
    conn.execute(
        insert(m.Document).values(
            document_type=view.kind,
            document_id=document_id,
            content_key=key,
            content_sha256=sha,
            byte_size=len(pdf),
            missing_fields=", ".join(missing),
            rendered_at=at,
        )
    )
    return StoredDocument(view.kind, document_id, key, sha, len(pdf))


def pdf_bytes(conn: Connection, sha256: str) -> bytes:
    return bytes(
        conn.execute(
            select(m.DocumentFile.content).where(m.DocumentFile.sha256 == sha256)
        ).scalar_one()
    )


def view_key(view: DocumentView, template_version: str) -> str:
    return content_key(view, template_version)


# --- Shares and their PDFs ---------------------------------------------------------------------


@dataclass(frozen=True)
class ShareToRender:
    share_id: int
    document_type: str
    document_id: int
    shared_at: datetime


def share_for(conn: Connection, delivery_id: int, revision: int) -> ShareToRender | None:
    r = conn.execute(
        select(m.PortalShare.__table__).where(
            and_(m.PortalShare.delivery_id == delivery_id, m.PortalShare.revision == revision)
        )
    ).first()
    if r is None:
        return None
    return ShareToRender(r.id, r.document_type, r.document_id, r.shared_at)


def attach_pdf(conn: Connection, share_id: int, sha256: str) -> None:
    conn.execute(
        update(m.PortalShare)
        .where(and_(m.PortalShare.id == share_id, m.PortalShare.content_sha256.is_(None)))
        .values(content_sha256=sha256)
    )


@dataclass(frozen=True)
class ExportItem:
    """A document to write for people: as shared (its last share), else as of now."""

    document_type: str
    document_id: int
    account_id: str
    practice_name: str
    client_id: str
    day: date
    as_of: datetime
    share_id: int | None


def documents_for_export(
    conn: Connection, client_id: str | None = None, month: str | None = None
) -> list[ExportItem]:
    """Every bill, superbill and statement (of one client, of one month: a bill by the month
    of its date, a superbill or statement by the month it covers)."""
    now = datetime.now(UTC)
    accounts = {
        a.id: (a.name, a.timezone)
        for a in conn.execute(select(m.Account.id, m.Account.name, m.Account.timezone))
    }
    last_share: dict[tuple[str, int], tuple[int, datetime]] = {}
    for s in conn.execute(
        select(
            m.PortalShare.id,
            m.PortalShare.document_type,
            m.PortalShare.document_id,
            m.PortalShare.shared_at,
        ).order_by(m.PortalShare.revision, m.PortalShare.id)
    ):
        last_share[(s.document_type, s.document_id)] = (s.id, s.shared_at)
    items: list[ExportItem] = []
    tables: list[tuple[str, type[m.Bill] | type[m.Superbill] | type[m.Statement]]] = [
        ("bill", m.Bill),
        ("superbill", m.Superbill),
        ("statement", m.Statement),
    ]
    for kind, table in tables:
        query = select(table.id, table.account_id, table.client_id, table.created_at)
        if kind != "bill":
            query = query.add_columns(table.month)  # type: ignore[union-attr]  # superbills and statements have a month
        if client_id is not None:
            query = query.where(table.client_id == client_id)
        for r in conn.execute(query.order_by(table.id)):
            name, tz = accounts[r.account_id]
            day = local_date(r.created_at, tz)
            covers = r.month if kind != "bill" else day.strftime("%Y-%m")
            if month is not None and covers != month:
                continue
            share = last_share.get((kind, r.id))
            items.append(
                ExportItem(
                    document_type=kind,
                    document_id=r.id,
                    account_id=r.account_id,
                    practice_name=name,
                    client_id=r.client_id,
                    day=day,
                    as_of=share[1] if share else now,
                    share_id=share[0] if share else None,
                )
            )
    return items
