"""Bills, superbills and statements rendered by the real WeasyPrint from the billing database
(SQLite and PostgreSQL), read back with pypdf: every field the issue lists is on the page, an
incomplete superbill says so, a document is rendered once per content, and a hostile client
name and address inject nothing and read no file (a canary file that an unsafe setup would
embed appears in no PDF and no attachment)."""

from __future__ import annotations

import io
import re
import shutil
import tempfile
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest
from pypdf import PdfReader
from sqlalchemy import Engine, func, select

from billing_pipeline.checks.documents import superbills_have_required_fields
from billing_pipeline.db import models as m
from billing_pipeline.db.report import build_report
from billing_pipeline.db.store import NewChange, record_changes
from billing_pipeline.resources.database import BillingDatabase
from billing_pipeline.resources.renderer import DocumentRenderer
from billing_pipeline.services.documents import pdf_of, render_document
from tests.documents_data import DocumentsData, write_practice

pytestmark = pytest.mark.slow  # starts the PDF worker process
AFTER_PAYMENT = datetime(2026, 11, 1, 5, tzinfo=UTC)
BEFORE_PAYMENT = datetime(2026, 10, 6, 4, 0, tzinfo=UTC)
CANARY_TEXT = "CANARY-7f3c1e-do-not-embed"


@pytest.fixture
def canary() -> Iterator[Path]:
    # A short path: the hostile name must fit the clients.name column (200).
    folder = Path(tempfile.mkdtemp(prefix="cn"))
    path = folder / "c.txt"
    path.write_text(CANARY_TEXT)
    yield path
    shutil.rmtree(folder)


@pytest.fixture
def data(engine: Engine, canary: Path) -> DocumentsData:
    return write_practice(engine, canary)


def _squash(text: str) -> str:
    # pypdf splits some kerned words ("T otal"): compare without any whitespace.
    return re.sub(r"\s+", "", text)


def read_text(pdf: bytes) -> str:
    reader = PdfReader(io.BytesIO(pdf))
    return "\n".join(page.extract_text() for page in reader.pages)


def assert_shows(pdf: bytes, *fields: str) -> None:
    text = _squash(read_text(pdf))
    missing = [f for f in fields if _squash(f) not in text]
    assert not missing, f"not on the page: {missing}"


def render(engine: Engine, kind: str, doc_id: int, as_of: datetime = AFTER_PAYMENT) -> bytes:
    return pdf_of(engine, render_document(engine, DocumentRenderer(), kind, doc_id, as_of))


PRACTICE_HEADER = (
    "Harbor Family Therapy",
    "12 Water Street, Suite 4",
    "Boston, MA 02110",
    "(617) 555-0142",
    "NPI 1245319599",
)


def test_a_bill_shows_practice_client_lines_and_totals_and_says_paid(
    engine: Engine, data: DocumentsData
) -> None:
    pdf = render(engine, "bill", data.bill_id)
    assert_shows(
        pdf,
        *PRACTICE_HEADER,
        f"Bill number B-{data.bill_id:06d}",
        "Bill date 10/06/2026",
        "Lily Chen",
        "7 Elm Road",
        "Client ID cl-docs-lily",
        "10/05/2026 90837 HJ 1 $180.00 $180.00",
        "10/05/2026 90785 1 $25.00 $25.00",
        "Total $205.00",
        "Paid $205.00",
        "Balance due $0.00",
        "Status PAID",
        "Page 1 of 1",
    )


def test_a_bill_rendered_before_its_payment_is_open_and_each_content_is_rendered_once(
    engine: Engine, data: DocumentsData
) -> None:
    before = render(engine, "bill", data.bill_id, BEFORE_PAYMENT)
    assert_shows(before, "Paid $0.00", "Balance due $205.00", "Status OPEN")
    again = render(engine, "bill", data.bill_id, BEFORE_PAYMENT)
    assert again == before  # the stored PDF, not a new rendering
    render(engine, "bill", data.bill_id, AFTER_PAYMENT)
    render(engine, "bill", data.bill_id, datetime(2026, 11, 20, tzinfo=UTC))  # still paid
    with engine.connect() as conn:
        renderings = conn.execute(
            select(m.Document.content_sha256).where(
                m.Document.document_type == "bill", m.Document.document_id == data.bill_id
            )
        ).scalars()
        assert len(list(renderings)) == 2  # open, then paid: once each
        files = conn.execute(select(func.count()).select_from(m.DocumentFile)).scalar_one()
        assert files == 2


def test_a_superbill_has_every_cms1500_field_an_insurer_needs(
    engine: Engine, data: DocumentsData
) -> None:
    pdf = render(engine, "superbill", data.superbill_id)
    assert_shows(
        pdf,
        *PRACTICE_HEADER,
        "SUPERBILL · OCTOBER 2026",
        # rendering provider
        "Maya Okafor, PhD, LMFT",
        "Provider NPI 1679576722",
        "License number LMFT-88213",
        # billing provider
        "Practice NPI 1245319599",
        "Tax ID 98-7654321",
        # client
        "Name Lily Chen",
        "Date of birth 02/14/2011",
        "7 Elm Road",
        "Member ID XKJ123456789",
        # diagnoses lettered, and every line pointing at them
        "A. F41.1",
        "B. F90.0",
        "C. Z63.0",
        "10/05/2026 11 90837 HJ ABC 1 $180.00 $180.00 $180.00",
        "10/05/2026 11 90785 ABC 1 $25.00 $25.00 $25.00",
        "10/12/2026 02 90834 95 ABC 1 $150.00 $150.00 $0.00",
        "Total charges $355.00",
        "Total paid $205.00",
        "Signature of provider",
        "Page 1 of 1",
    )
    assert "INCOMPLETE" not in read_text(pdf)


def test_a_superbill_lists_the_services_in_force_at_its_creation(
    engine: Engine, data: DocumentsData
) -> None:
    """Services are history (contract, "Changes over time"): the superbill made at 00:00 on
    November 1st shows a session's services as changed before that instant, and a change
    after it does not rewrite the document."""
    made = datetime(2026, 11, 1, 4, tzinfo=UTC)

    def services(cpt: str, fee: int) -> list[dict[str, object]]:
        return [{"cpt": cpt, "units": 1, "fee_cents": fee, "modifiers": []}]

    with engine.begin() as conn:
        record_changes(
            conn,
            [
                NewChange(
                    "acct-docs",
                    "session",
                    "s-lily-1012",
                    "services",
                    services("90837", 18000),
                    made - timedelta(days=1),
                ),
                NewChange(
                    "acct-docs",
                    "session",
                    "s-lily-1012",
                    "services",
                    services("90832", 9000),
                    made + timedelta(minutes=1),
                ),
            ],
            recorded_at=made,
        )
    text = read_text(render(engine, "superbill", data.superbill_id))
    assert "10/12/2026 02 90837 ABC 1 $180.00" in text
    assert "90834" not in text and "90832" not in text


def test_an_incomplete_superbill_is_made_marked_and_listed_for_staff(
    database_url: str, engine: Engine, data: DocumentsData
) -> None:
    pdf = render(engine, "superbill", data.incomplete_superbill_id)
    assert_shows(
        pdf,
        "INCOMPLETE SUPERBILL",
        "missing client date of birth, diagnosis (ICD-10)",
        "Date of birth MISSING",
        "No diagnosis on file",
        "10/08/2026 11 90832",
    )
    with engine.connect() as conn:
        warnings = build_report(conn)["warnings"]
    listed = [w for w in warnings if w["code"] == "superbill_incomplete"]
    assert listed == [
        {
            "code": "superbill_incomplete",
            "client_id": "cl-docs-noah",
            "superbill_id": f"superbill-{data.incomplete_superbill_id}",
            "month": "2026-10",
            "missing": ["client date of birth", "diagnosis (ICD-10)"],
            "message": f"superbill-{data.incomplete_superbill_id} (2026-10) lacks client date "
            "of birth, diagnosis (ICD-10): it was made and marked incomplete",
        }
    ]
    check = superbills_have_required_fields(db=BillingDatabase(url=database_url))
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    assert check.metadata["incomplete_superbills"].value == [
        {
            "superbill_id": f"superbill-{data.incomplete_superbill_id}",
            "client_id": "cl-docs-noah",
            "month": "2026-10",
            "missing": ["client date of birth", "diagnosis (ICD-10)"],
        }
    ]


def test_a_statement_shows_opening_each_bill_and_payment_and_closing(
    engine: Engine, data: DocumentsData
) -> None:
    pdf = render(engine, "statement", data.statement_id)
    assert_shows(
        pdf,
        *PRACTICE_HEADER,
        "STATEMENT · OCTOBER 2026",
        "Issued 11/01/2026",
        "Lily Chen",
        "Opening balance $0.00",
        f"10/06/2026 Bill B-{data.bill_id:06d} $205.00 $205.00",
        "10/06/2026 Payment (AutoPay) $205.00 $0.00",
        "10/13/2026",
        "$150.00 $150.00",
        "Closing balance $150.00",
    )


def _all_bytes_of(pdf: bytes) -> bytes:
    """The PDF and every stream in it inflated: a canary could hide in a compressed one."""
    out = [pdf]
    for match in re.finditer(rb"stream\r?\n(.*?)\r?\nendstream", pdf, re.S):
        try:
            out.append(zlib.decompress(match.group(1)))
        except zlib.error:
            continue
    return b"\n".join(out)


def test_a_hostile_name_and_address_print_as_text_and_read_no_file(
    engine: Engine, data: DocumentsData, canary: Path
) -> None:
    for kind, doc_id in (("bill", data.hostile_bill_id),):
        pdf = render(engine, kind, doc_id)
        reader = PdfReader(io.BytesIO(pdf))
        assert dict(reader.attachments) == {}
        assert b"/EmbeddedFile" not in pdf and b"/Filespec" not in pdf
        assert CANARY_TEXT.encode() not in _all_bytes_of(pdf)
        for page in reader.pages:
            xobjects = page.get("/Resources", {}).get("/XObject", {})
            assert not xobjects, "an image was loaded"
        assert_shows(pdf, '<link rel="attachment" href="', 'Eve "Mallory"', "1 Evil Way</a> & Co")
    with engine.connect() as conn:
        sb_id = conn.execute(
            select(m.Superbill.id).where(m.Superbill.client_id == "cl-docs-eve")
        ).scalar_one()
    pdf = render(engine, "superbill", sb_id)
    assert dict(PdfReader(io.BytesIO(pdf)).attachments) == {}
    assert CANARY_TEXT.encode() not in _all_bytes_of(pdf)
    assert_shows(pdf, "<style>@import url(")


def test_the_canary_test_would_catch_an_unsafe_setup(canary: Path) -> None:
    """The same markup, unescaped and rendered with WeasyPrint's default fetcher, attaches the
    canary: the test above has teeth."""
    from weasyprint import HTML

    html = f'<html><head><link rel="attachment" href="{canary.as_uri()}"></head><body>x</body>'
    pdf = HTML(string=html).write_pdf()
    assert CANARY_TEXT.encode() in _all_bytes_of(pdf) or any(
        CANARY_TEXT.encode() in b"".join(v) for v in PdfReader(io.BytesIO(pdf)).attachments.values()
    )


def test_documents_export_writes_named_pdfs_for_people_filtered_by_client_and_month(
    database_url: str, engine: Engine, data: DocumentsData, tmp_path: Path
) -> None:
    from tests.contract.runner import cli_in_process

    env = {"BILLING_DATABASE_URL": database_url, "BILLING_DATA_DIR": str(tmp_path / "data")}
    out = tmp_path / "lily"
    done = cli_in_process(env, "documents", "export", str(out), "--client", "cl-docs-lily")
    assert done.returncode == 0, done.stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(
        [
            f"Harbor-Family-Therapy_bill_cl-docs-lily_2026-10-06_B-{data.bill_id:06d}.pdf",
            f"Harbor-Family-Therapy_bill_cl-docs-lily_2026-10-13_B-{data.bill_id + 1:06d}.pdf",
            f"Harbor-Family-Therapy_superbill_cl-docs-lily_2026-11-01_S-{data.superbill_id:06d}.pdf",
            f"Harbor-Family-Therapy_statement_cl-docs-lily_2026-11-01_T-{data.statement_id:06d}.pdf",
        ]
    )
    paid = out / names[0]
    assert (paid.stat().st_mode & 0o777) == 0o600
    assert_shows(paid.read_bytes(), "Status PAID")

    october = tmp_path / "october"
    done = cli_in_process(env, "documents", "export", str(october), "--month", "2026-10")
    assert done.returncode == 0, done.stderr
    # Four October bills, three superbills and one statement covering October.
    assert len(list(october.iterdir())) == 8
    assert (
        cli_in_process(env, "documents", "export", str(october), "--month", "10/2026").returncode
        == 2
    )


def test_a_render_past_its_timeout_is_stopped_and_the_next_one_works(
    engine: Engine, data: DocumentsData
) -> None:
    from billing_pipeline.db.documents import document_view
    from billing_pipeline.resources.renderer import RenderTimeout

    with engine.connect() as conn:
        view = document_view(conn, "superbill", data.superbill_id, AFTER_PAYMENT)
    with pytest.raises(RenderTimeout, match=r"rendering superbill S-\d{6} took longer than"):
        DocumentRenderer(timeout_seconds=0.001).render(view)
    assert_shows(DocumentRenderer().render(view), "Total charges $355.00")


def test_the_superbill_check_passes_once_staff_complete_the_data(
    database_url: str, engine: Engine, data: DocumentsData
) -> None:
    from datetime import date

    from sqlalchemy import insert, update

    with engine.begin() as conn:
        conn.execute(
            update(m.Client)
            .where(m.Client.id == "cl-docs-noah")
            .values(date_of_birth=date(1985, 1, 2))
        )
        conn.execute(
            insert(m.Diagnosis).values(client_id="cl-docs-noah", position=0, icd10_code="F43.23")
        )
    check = superbills_have_required_fields(db=BillingDatabase(url=database_url))
    assert check.passed
    with engine.connect() as conn:
        assert not [
            w for w in build_report(conn)["warnings"] if w["code"] == "superbill_incomplete"
        ]
