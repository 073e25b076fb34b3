"""What the documents say, decided without WeasyPrint: letters, pointers, totals, PAID,
missing superbill fields, the statement's running balance, file names, and the email."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from billing_pipeline.domain.document_views import (
    ClientFacts,
    LedgerEvent,
    PracticeFacts,
    ProviderFacts,
    ServiceFacts,
    bill_view,
    content_key,
    export_file_name,
    letter_diagnoses,
    missing_superbill_fields,
    statement_view,
    superbill_view,
    us_date,
)
from billing_pipeline.domain.notifications import gives_up, notification, retry_delay

PRACTICE = PracticeFacts("Harbor Family Therapy", "1245319599", "98-7654321", "1 Main", "555")
PROVIDER = ProviderFacts("Maya Okafor", "PhD", "1679576722", "LIC-1")
CLIENT = ClientFacts("cl-1", "Lily Chen", date(2011, 2, 14), "7 Elm", "M-1")
SERVICES = [
    ServiceFacts(date(2026, 10, 12), "90834", 1, 15000, "95", "02"),
    ServiceFacts(date(2026, 10, 5), "90837", 2, 9000, "HJ", "11", paid=True),
]


def test_us_dates_are_month_day_year() -> None:
    assert us_date(date(2026, 3, 7)) == "03/07/2026"


def test_diagnoses_are_lettered_in_order_without_repeats_and_at_most_twelve() -> None:
    codes = ["f41.1", "F90.0", "F41.1"] + [f"Z{n:02d}.0" for n in range(20)]
    lettered = letter_diagnoses(codes)
    assert [(d.letter, d.code) for d in lettered[:3]] == [
        ("A", "F41.1"),
        ("B", "F90.0"),
        ("C", "Z00.0"),
    ]
    assert len(lettered) == 12 and lettered[-1].letter == "L"


def test_superbill_lines_point_at_up_to_four_letters_and_total_charges_and_paid() -> None:
    view = superbill_view(
        PRACTICE, PROVIDER, CLIENT, 3, "2026-10", date(2026, 11, 1),
        ["F41.1", "F90.0", "Z63.0", "F43.2", "F32.1"], SERVICES,
    )  # fmt: skip
    assert [line.service_date for line in view.lines] == ["10/05/2026", "10/12/2026"]
    assert {line.pointers for line in view.lines} == {"ABCD"}
    assert view.lines[0].amount == "$180.00" and view.lines[0].paid == "$180.00"
    assert view.lines[1].paid == "$0.00"
    assert (view.total_charges, view.total_paid) == ("$330.00", "$180.00")
    assert view.complete and view.month == "October 2026" and view.number == "S-000003"


@pytest.mark.parametrize(
    ("practice", "provider", "client", "codes", "missing"),
    [
        (PRACTICE, PROVIDER, CLIENT, ["F41.1"], ()),
        (PracticeFacts("P"), ProviderFacts(), CLIENT, ["F41.1"],
         ("practice NPI", "practice tax id")),
        (PRACTICE, ProviderFacts("Dr A"), CLIENT, ["F41.1"], ("rendering provider NPI",)),
        (PRACTICE, ProviderFacts(), CLIENT, ["F41.1"], ()),  # a solo practice renders as itself
        (PRACTICE, PROVIDER, ClientFacts("c", "N"), [],
         ("client date of birth", "diagnosis (ICD-10)")),
    ],
)  # fmt: skip
def test_missing_superbill_fields(
    practice: PracticeFacts,
    provider: ProviderFacts,
    client: ClientFacts,
    codes: list[str],
    missing: tuple[str, ...],
) -> None:
    assert missing_superbill_fields(practice, provider, client, letter_diagnoses(codes)) == missing


def test_a_paid_bill_says_paid_with_nothing_due_and_an_open_one_is_due_in_full() -> None:
    paid = bill_view(PRACTICE, CLIENT, 42, date(2026, 10, 6), SERVICES, paid=True)
    assert (paid.status, paid.total, paid.paid, paid.balance) == (
        "PAID", "$330.00", "$330.00", "$0.00",
    )  # fmt: skip
    open_ = bill_view(PRACTICE, CLIENT, 42, date(2026, 10, 6), SERVICES, paid=False)
    assert (open_.status, open_.balance, open_.number) == ("OPEN", "$330.00", "B-000042")
    assert content_key(paid, "t1") != content_key(open_, "t1")
    assert content_key(paid, "t1") == content_key(paid, "t1") != content_key(paid, "t2")


def test_a_statement_runs_the_balance_from_opening_to_closing() -> None:
    view = statement_view(
        PRACTICE, CLIENT, 9, "2026-10", date(2026, 11, 1), 5000,
        [
            LedgerEvent(date(2026, 10, 6), "Payment", -20500),
            LedgerEvent(date(2026, 10, 6), "Bill B-000001", 20500),
            LedgerEvent(date(2026, 10, 13), "Bill B-000002", 15000),
        ],
    )  # fmt: skip
    assert [(e.description, e.charge, e.payment, e.balance) for e in view.entries] == [
        ("Bill B-000001", "$205.00", "", "$255.00"),
        ("Payment", "", "$205.00", "$50.00"),
        ("Bill B-000002", "$150.00", "", "$200.00"),
    ]
    assert (view.opening_balance, view.closing_balance) == ("$50.00", "$200.00")


def test_export_names_say_practice_kind_client_and_date_in_safe_characters() -> None:
    name = export_file_name(
        "Harbor Family / Therapy", "bill", "cl-1/../x", date(2026, 10, 6), "B-1"
    )
    assert name == "Harbor-Family-Therapy_bill_cl-1-x_2026-10-06_B-1.pdf"
    assert "/" not in name


def test_the_email_names_the_practice_and_links_the_portal_and_nothing_else() -> None:
    message = notification("Harbor\r\nBcc: x@y", "superbill", "https://portal/documents/s/3")
    assert message.subject == "Harbor Bcc: x@y: a new document in your client portal"
    assert "\n" not in message.subject
    assert "a superbill" in message.body and "https://portal/documents/s/3" in message.body
    assert "$" not in message.body


def test_failed_emails_wait_longer_each_time_and_give_up_at_the_limit() -> None:
    assert [retry_delay(n) for n in (1, 2, 3)] == [
        timedelta(minutes=1), timedelta(minutes=2), timedelta(minutes=4),
    ]  # fmt: skip
    assert retry_delay(30) == timedelta(hours=1)
    assert retry_delay(1, first=timedelta(0)) == timedelta(0)
    assert not gives_up(4, 5) and gives_up(5, 5)


def test_the_url_fetcher_serves_the_stylesheet_and_refuses_every_other_url() -> None:
    from weasyprint.urls import FatalURLFetchingError

    from billing_pipeline.resources.pdf_worker import STYLESHEET_URL, PackageAssetFetcher

    fetcher = PackageAssetFetcher()
    assert b"table-layout: fixed" in fetcher.fetch(STYLESHEET_URL).read()
    for url in (
        "file:///etc/passwd",
        "http://127.0.0.1/x.css",
        "data:text/css,body{}",
        "billing-assets:/static/../../../../etc/passwd",
    ):
        with pytest.raises(FatalURLFetchingError):
            fetcher.fetch(url)


def test_templates_are_autoescaped_whatever_their_name() -> None:
    from billing_pipeline.resources.renderer import document_html

    hostile = ClientFacts("cl-x", '<link rel="attachment" href="file:///etc/passwd">')
    html = document_html(bill_view(PRACTICE, hostile, 1, date(2026, 1, 1), SERVICES, paid=False))
    assert "&lt;link rel=&#34;attachment&#34;" in html
    assert '<link rel="attachment"' not in html
