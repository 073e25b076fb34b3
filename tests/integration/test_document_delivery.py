"""Delivery, exactly once, through the real delivery job (Dagster, in process), the real
WeasyPrint and a real SMTP server (aiosmtpd on loopback), on SQLite and PostgreSQL: each due
delivery is shared in the portal with its PDF and sends one email holding no PHI; an outage
leaves the emails pending and a later run sends each once; two delivery runs at once send
each message once."""

from __future__ import annotations

import io
import socket
import threading
import time
from collections.abc import Iterator
from email import message_from_bytes
from email.message import Message
from pathlib import Path

import dagster as dg
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import Envelope
from pypdf import PdfReader
from sqlalchemy import Engine, select

from billing_pipeline.checks.documents import notification_emails_sent
from billing_pipeline.db import models as m
from billing_pipeline.db.report import build_report
from billing_pipeline.jobs import deliver_documents_job
from billing_pipeline.resources.clock import Clock
from billing_pipeline.resources.database import BillingDatabase
from billing_pipeline.resources.notifier import Notifier
from billing_pipeline.resources.renderer import DocumentRenderer
from tests.documents_data import PHI, DocumentsData, write_practice

pytestmark = pytest.mark.slow  # an SMTP server, Dagster runs and the PDF worker


class Sink:
    """Keeps every message the server accepted; `delay` slows each one down (so that two
    runs overlap)."""

    def __init__(self, delay: float = 0.0) -> None:
        self.messages: list[tuple[list[str], bytes]] = []
        self.delay = delay
        self.lock = threading.Lock()

    async def handle_DATA(
        self, server: object, session: object, envelope: Envelope
    ) -> str:  # aiosmtpd's hook name
        if self.delay:
            time.sleep(self.delay)  # blocks the server's loop: one message at a time
        with self.lock:
            self.messages.append((list(envelope.rcpt_tos), bytes(envelope.original_content or b"")))
        return "250 OK"

    def parsed(self) -> list[Message]:
        return [message_from_bytes(raw) for _to, raw in self.messages]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SmtpServer:
    def __init__(self, port: int, delay: float = 0.0) -> None:
        self.sink = Sink(delay)
        self.controller = Controller(self.sink, hostname="127.0.0.1", port=port)

    def __enter__(self) -> SmtpServer:
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()


@pytest.fixture
def data(engine: Engine) -> DocumentsData:
    # The documents' safety is tested in test_documents_pdf.py; any canary path does here.
    return write_practice(engine, Path("/nonexistent/c.txt"))


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def smtp(port: int) -> Iterator[SmtpServer]:
    with SmtpServer(port) as server:
        yield server


def deliver(database_url: str, port: int, **notifier: object) -> dg.ExecuteInProcessResult:
    return deliver_documents_job.execute_in_process(
        instance=dg.DagsterInstance.ephemeral(),
        resources={
            "db": BillingDatabase(url=database_url),
            "clock": Clock(),
            "notifier": Notifier(smtp_host="127.0.0.1", smtp_port=port, **notifier),
            "renderer": DocumentRenderer(),
        },
        raise_on_error=False,
    )


def emails_by_delivery(engine: Engine) -> dict[int, tuple[str | None, int, str | None]]:
    with engine.connect() as conn:
        return {
            r.id: (r.email_status, r.email_attempts, r.email_last_error)
            for r in conn.execute(
                select(
                    m.Delivery.id,
                    m.Delivery.email_status,
                    m.Delivery.email_attempts,
                    m.Delivery.email_last_error,
                )
            )
        }


def assert_no_phi(messages: list[Message]) -> None:
    for message in messages:
        assert not message.is_multipart(), "an attachment"
        text = f"{message['Subject']}\n{message['From']}\n{message.get_payload(decode=True)!r}"
        found = [needle for needle in PHI if needle.lower() in text.lower()]
        assert not found, f"PHI in an email: {found}"
        assert "$" not in text


def test_each_due_delivery_is_shared_with_its_pdf_and_sends_one_email_without_phi(
    database_url: str, engine: Engine, data: DocumentsData, smtp: SmtpServer, port: int
) -> None:
    run = deliver(database_url, port)
    assert run.success
    assert run.output_for_node("share_due_documents") == 5
    # Noah has no email address: four messages, one per delivery with a recipient address.
    messages = smtp.sink.parsed()
    ids = sorted(msg["Message-ID"] for msg in messages)
    assert len(ids) == 4 and len(set(ids)) == 4
    recipients = sorted(to[0] for to, _raw in smtp.sink.messages)
    assert recipients == ["eve@example.test"] + ["paul.parent@example.test"] * 3
    assert_no_phi(messages)
    for msg in messages:
        assert msg["Subject"] == "Harbor Family Therapy: a new document in your client portal"
        assert "https://portal.example.invalid/documents/" in msg.get_payload()

    state = emails_by_delivery(engine)
    noah_superbill = data.delivery_ids[3]
    assert state[noah_superbill][0] == "no_address"
    assert {s for i, s in state.items() if i != noah_superbill} == {("sent", 1, None)}

    # The portal holds each PDF; the bill AutoPay paid before delivery says PAID.
    with engine.connect() as conn:
        shares = conn.execute(
            select(m.PortalShare.delivery_id, m.DocumentFile.content).join(
                m.DocumentFile, m.DocumentFile.sha256 == m.PortalShare.content_sha256
            )
        ).all()
        assert len(shares) == 5
        paid_bill = next(s.content for s in shares if s.delivery_id == data.delivery_ids[0])
        text = PdfReader(io.BytesIO(paid_bill)).pages[0].extract_text()
        assert "PAID" in text and "Balance due $0.00" in text

        warnings = build_report(conn)["warnings"]
    assert {"code": "notification_email_no_address", "client_id": "cl-docs-noah"}.items() <= next(
        w for w in warnings if w["code"].startswith("notification_email")
    ).items()
    check = notification_emails_sent(db=BillingDatabase(url=database_url))
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN

    # A re-run finds everything done: nothing is shared or sent again.
    again = deliver(database_url, port)
    assert again.success and again.output_for_node("share_due_documents") == 0
    assert len(smtp.sink.messages) == 4


def test_an_smtp_outage_leaves_emails_pending_and_a_later_run_sends_each_once(
    database_url: str, engine: Engine, data: DocumentsData, port: int
) -> None:
    down = deliver(database_url, port, first_retry_seconds=0)  # nothing listens on the port
    assert down.success  # the shares are made; the emails wait
    state = emails_by_delivery(engine)
    # The first failure ends the run's sending (an outage fails every send): all wait.
    assert {s[0] for s in state.values()} == {"pending"}
    errors = [s[2] for s in state.values() if s[2]]
    assert errors and all(e.startswith("SMTP 127.0.0.1:") for e in errors)
    assert not any(needle.lower() in e.lower() for e in errors for needle in PHI)

    with SmtpServer(port) as server:
        up = deliver(database_url, port, first_retry_seconds=0)
        assert up.success
        assert len(server.sink.messages) == 4
        deliver(database_url, port, first_retry_seconds=0)
        assert len(server.sink.messages) == 4
    assert {s[0] for s in emails_by_delivery(engine).values()} == {"sent", "no_address"}


def test_an_email_that_keeps_failing_is_marked_failed_for_staff(
    database_url: str, engine: Engine, data: DocumentsData, port: int
) -> None:
    for _ in range(2):
        deliver(database_url, port, first_retry_seconds=0, max_email_attempts=2)
    failed = [i for i, s in emails_by_delivery(engine).items() if s[0] == "failed"]
    assert failed == [data.delivery_ids[0]]
    check = notification_emails_sent(db=BillingDatabase(url=database_url))
    assert not check.passed
    listed = check.metadata["emails_not_sent"].value
    assert {"delivery_id": failed[0], "status": "failed", "attempts": 2}.items() <= listed[
        0
    ].items()


def test_two_delivery_runs_at_once_send_each_message_once(
    database_url: str, engine: Engine, data: DocumentsData, port: int
) -> None:
    with SmtpServer(port, delay=0.3) as server:
        results: list[dg.ExecuteInProcessResult] = []
        runs = [
            threading.Thread(target=lambda: results.append(deliver(database_url, port)))
            for _ in range(2)
        ]
        for t in runs:
            t.start()
        for t in runs:
            t.join(timeout=300)
        assert len(results) == 2 and all(r.success for r in results)
        ids = [msg["Message-ID"] for msg in server.sink.parsed()]
    assert len(ids) == 4 and len(set(ids)) == 4
    assert sum(int(r.output_for_node("share_due_documents")) for r in results) == 5


def test_the_demo_sink_keeps_each_message_as_an_eml_file(tmp_path: Path) -> None:
    from billing_pipeline.domain.notifications import notification
    from billing_pipeline.smtp_sink import SmtpSink

    with SmtpSink(tmp_path / "emails") as sink:
        Notifier(smtp_host="127.0.0.1", smtp_port=sink.port).send(
            "someone@example.test",
            "Harbor Family Therapy",
            notification("Harbor Family Therapy", "bill", "https://portal.example.invalid/d/1"),
            "<delivery-7.abc@billing-pipeline.invalid>",
        )
    [eml] = (tmp_path / "emails").iterdir()
    assert eml.name == "0001-delivery-7.eml"
    message = message_from_bytes(eml.read_bytes())
    assert message["Subject"] == "Harbor Family Therapy: a new document in your client portal"


def test_a_server_that_never_answers_fails_the_send_within_the_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from billing_pipeline.domain.notifications import notification
    from billing_pipeline.resources.notifier import EmailNotSent

    monkeypatch.setenv("BILLING_SMTP_TIMEOUT_SECONDS", "0.5")
    with socket.socket() as silent:  # accepts connections (the backlog) and never greets
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        port = silent.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(EmailNotSent, match=r"^SMTP 127\.0\.0\.1:\d+ \(none\): "):
            Notifier(smtp_host="127.0.0.1", smtp_port=port).send(
                "someone@example.test",
                "Harbor",
                notification("Harbor", "bill", "https://portal.example.invalid/d/1"),
                "<delivery-1.x@billing-pipeline.invalid>",
            )
        assert time.monotonic() - started < 5
