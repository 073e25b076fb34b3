"""What a bill, a superbill and a statement say, as plain values ready for a template.

The templates only lay these out: every figure, date, letter and missing field is decided here,
so it is tested without WeasyPrint. Money stays in cents until `dollars()` makes it text; dates
are the practice's local dates and print the US way (MM/DD/YYYY).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import date

from billing_pipeline.domain.money import dollars

# CMS-1500 box 21 holds twelve diagnoses, A to L; a service line (24E) points at up to four.
DIAGNOSIS_LETTERS = "ABCDEFGHIJKL"
POINTERS_PER_LINE = 4


def us_date(day: date) -> str:
    """`date(2026, 3, 7)` -> `"03/07/2026"`."""
    return f"{day.month:02d}/{day.day:02d}/{day.year:04d}"


def month_label(month: str) -> str:
    """`"2026-10"` -> `"October 2026"`."""
    year, mon = (int(p) for p in month.split("-"))
    return f"{date(year, mon, 1):%B} {year}"


@dataclass(frozen=True)
class PracticeFacts:
    """The practice (the billing provider of a superbill)."""

    name: str
    npi: str | None = None
    tax_id: str | None = None
    address: str | None = None
    phone: str | None = None


@dataclass(frozen=True)
class ProviderFacts:
    """The rendering clinician shown on superbills."""

    name: str | None = None
    credentials: str | None = None
    npi: str | None = None
    license_number: str | None = None


@dataclass(frozen=True)
class ClientFacts:
    id: str
    name: str
    date_of_birth: date | None = None
    address: str | None = None
    insurance_member_id: str | None = None

    @property
    def date_of_birth_text(self) -> str:
        return us_date(self.date_of_birth) if self.date_of_birth else ""


@dataclass(frozen=True)
class ServiceFacts:
    """One billed service of a session, on the session's local date."""

    service_date: date
    cpt: str
    units: int
    fee_cents: int
    modifiers: str = ""
    place_of_service: str | None = None
    paid: bool = False  # whether the bill holding it was paid when the document was made

    @property
    def amount_cents(self) -> int:
        return self.units * self.fee_cents


@dataclass(frozen=True)
class ServiceLine:
    service_date: str
    cpt: str
    modifiers: str
    units: int
    fee: str
    amount: str
    place_of_service: str = ""
    pointers: str = ""
    paid: str = ""


def _line(s: ServiceFacts, pointers: str = "") -> ServiceLine:
    return ServiceLine(
        service_date=us_date(s.service_date),
        cpt=s.cpt,
        modifiers=s.modifiers,
        units=s.units,
        fee=dollars(s.fee_cents),
        amount=dollars(s.amount_cents),
        place_of_service=s.place_of_service or "",
        pointers=pointers,
        paid=dollars(s.amount_cents if s.paid else 0),
    )


def _ordered(services: Sequence[ServiceFacts]) -> list[ServiceFacts]:
    return sorted(services, key=lambda s: (s.service_date, s.cpt, s.modifiers))


@dataclass(frozen=True)
class BillView:
    kind = "bill"
    practice: PracticeFacts
    client: ClientFacts
    number: str
    bill_date: str
    lines: tuple[ServiceLine, ...]
    total: str
    paid: str
    balance: str
    status: str  # "PAID" | "OPEN"


def bill_view(
    practice: PracticeFacts,
    client: ClientFacts,
    bill_id: int,
    bill_day: date,
    services: Sequence[ServiceFacts],
    *,
    paid: bool,
) -> BillView:
    """A bill as it stands: PAID with nothing due when AutoPay (or anyone) paid it by the
    instant the view is made for, else OPEN with the whole amount due."""
    total = sum(s.amount_cents for s in services)
    paid_cents = total if paid else 0
    return BillView(
        practice=practice,
        client=client,
        number=bill_number(bill_id),
        bill_date=us_date(bill_day),
        lines=tuple(_line(s) for s in _ordered(services)),
        total=dollars(total),
        paid=dollars(paid_cents),
        balance=dollars(total - paid_cents),
        status="PAID" if paid else "OPEN",
    )


def bill_number(bill_id: int) -> str:
    return document_number("bill", bill_id)


NUMBER_PREFIX = {"bill": "B", "superbill": "S", "statement": "T"}


def document_number(kind: str, document_id: int) -> str:
    """The number printed on a document: B-000042 (bill), S-... (superbill), T-... (statement)."""
    return f"{NUMBER_PREFIX[kind]}-{document_id:06d}"


@dataclass(frozen=True)
class LetteredDiagnosis:
    letter: str
    code: str


@dataclass(frozen=True)
class MonthlyView:
    """What a month's superbill and statement both show at the top."""

    practice: PracticeFacts
    client: ClientFacts
    number: str
    month: str
    issued: str


@dataclass(frozen=True)
class SuperbillView(MonthlyView):
    kind = "superbill"
    provider: ProviderFacts
    diagnoses: tuple[LetteredDiagnosis, ...]
    lines: tuple[ServiceLine, ...]
    total_charges: str
    total_paid: str
    missing: tuple[str, ...] = field(default=())

    @property
    def complete(self) -> bool:
        return not self.missing


def letter_diagnoses(codes: Sequence[str]) -> tuple[LetteredDiagnosis, ...]:
    """The client's ICD-10 codes in their order, lettered A, B, C... (at most twelve, as on
    the CMS-1500; a repeated code keeps its first letter)."""
    seen: list[str] = []
    for raw in codes:
        code = raw.strip().upper()
        if code and code not in seen:
            seen.append(code)
    return tuple(
        LetteredDiagnosis(letter, code)
        for letter, code in zip(DIAGNOSIS_LETTERS, seen, strict=False)
    )


def pointers_for(diagnoses: Sequence[LetteredDiagnosis]) -> str:
    """A service line points at the first four diagnoses (all of them apply to every session:
    a client's diagnoses are not recorded per session)."""
    return "".join(d.letter for d in diagnoses[:POINTERS_PER_LINE])


def missing_superbill_fields(
    practice: PracticeFacts,
    provider: ProviderFacts,
    client: ClientFacts,
    diagnoses: Sequence[LetteredDiagnosis],
) -> tuple[str, ...]:
    """The fields an insurer needs that the superbill lacks, in the order of the form. A
    practice without a rendering provider of its own renders as itself (a solo practice); a
    provider named without an NPI is missing one."""
    missing = []
    if not practice.npi:
        missing.append("practice NPI")
    if not practice.tax_id:
        missing.append("practice tax id")
    if provider.name and not provider.npi:
        missing.append("rendering provider NPI")
    if client.date_of_birth is None:
        missing.append("client date of birth")
    if not diagnoses:
        missing.append("diagnosis (ICD-10)")
    return tuple(missing)


def superbill_view(
    practice: PracticeFacts,
    provider: ProviderFacts,
    client: ClientFacts,
    superbill_id: int,
    month: str,
    issued_day: date,
    diagnosis_codes: Sequence[str],
    services: Sequence[ServiceFacts],
) -> SuperbillView:
    """A superbill for `month`: one line per service, each pointing at its diagnosis letters,
    with what was paid; marked incomplete (never refused) when a required field is missing."""
    diagnoses = letter_diagnoses(diagnosis_codes)
    pointers = pointers_for(diagnoses)
    ordered = _ordered(services)
    return SuperbillView(
        practice=practice,
        provider=provider,
        client=client,
        number=document_number("superbill", superbill_id),
        month=month_label(month),
        issued=us_date(issued_day),
        diagnoses=diagnoses,
        lines=tuple(_line(s, pointers) for s in ordered),
        total_charges=dollars(sum(s.amount_cents for s in ordered)),
        total_paid=dollars(sum(s.amount_cents for s in ordered if s.paid)),
        missing=missing_superbill_fields(practice, provider, client, diagnoses),
    )


@dataclass(frozen=True)
class StatementEntry:
    entry_date: str
    description: str
    charge: str
    payment: str
    balance: str


@dataclass(frozen=True)
class LedgerEvent:
    """A bill (a charge, positive) or a payment (negative) in the statement's month."""

    day: date
    description: str
    amount_cents: int


@dataclass(frozen=True)
class StatementView(MonthlyView):
    kind = "statement"
    opening_balance: str
    entries: tuple[StatementEntry, ...]
    closing_balance: str


def statement_view(
    practice: PracticeFacts,
    client: ClientFacts,
    statement_id: int,
    month: str,
    issued_day: date,
    opening_balance_cents: int,
    events: Sequence[LedgerEvent],
) -> StatementView:
    """The month's opening balance, each bill and payment in date order (bills before payments
    on one day) with the running balance, and the closing balance."""
    balance = opening_balance_cents
    entries = []
    for e in sorted(events, key=lambda e: (e.day, e.amount_cents < 0, e.description)):
        balance += e.amount_cents
        entries.append(
            StatementEntry(
                entry_date=us_date(e.day),
                description=e.description,
                charge=dollars(e.amount_cents) if e.amount_cents >= 0 else "",
                payment=dollars(-e.amount_cents) if e.amount_cents < 0 else "",
                balance=dollars(balance),
            )
        )
    return StatementView(
        practice=practice,
        client=client,
        number=document_number("statement", statement_id),
        month=month_label(month),
        issued=us_date(issued_day),
        opening_balance=dollars(opening_balance_cents),
        entries=tuple(entries),
        closing_balance=dollars(balance),
    )


DocumentView = BillView | SuperbillView | StatementView


def content_key(view: DocumentView, template_version: str) -> str:
    """A digest of everything a document shows (and of the templates' version): the same key
    means the same document, so it is rendered once."""
    payload = json.dumps(
        {"kind": view.kind, "view": asdict(view), "templates": template_version},
        sort_keys=True,
        default=str,
        separators=(",", ":"),
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def export_file_name(practice_name: str, kind: str, client_id: str, day: date, ref: str) -> str:
    """A name a person can find a file by: practice, kind, client id, date (and the document's
    number so that two of one day differ), in safe characters only."""
    parts = [_slug(practice_name), kind, _slug(client_id), day.isoformat(), _slug(ref)]
    return "_".join(p for p in parts if p) + ".pdf"


def _slug(text: str) -> str:
    out = []
    for ch in text.strip():
        if ch.isascii() and ch.isalnum():
            out.append(ch)
        elif ch in "-." and out and out[-1] != "-":
            out.append("-")
        elif out and out[-1] != "-":
            out.append("-")
    return "".join(out).strip("-")[:60]
