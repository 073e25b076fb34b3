"""DocumentRenderer: bills, superbills and statements as PDFs, from Jinja2 templates shipped in
the package, through WeasyPrint.

Safety (DESIGN.md): every template is autoescaped (the Environment escapes whatever the name,
where `select_autoescape()` would not cover `*.html.j2`), undefined values fail, no user text
goes into a `style` attribute, and WeasyPrint runs with a URL fetcher that serves the package's
stylesheet and nothing else (resources/pdf_worker.py). A render runs in a worker process with a
timeout: one that runs away is stopped and its worker replaced.
"""

from __future__ import annotations

import ctypes.util
import hashlib
import logging
import os
import select
import struct
import subprocess
import sys
import threading
import time
from functools import lru_cache

import dagster as dg
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from pydantic import Field

from billing_pipeline.domain.document_views import DocumentView
from billing_pipeline.errors import SafeMessageError
from billing_pipeline.resources.documents_assets import ASSETS

TEMPLATES = ASSETS / "templates"
TITLES = {"bill": "Bill", "superbill": "Superbill", "statement": "Statement"}
log = logging.getLogger(__name__)


class RenderTimeout(SafeMessageError):
    """A document took longer than the renderer's timeout (its kind and number only)."""


@lru_cache(maxsize=1)
def environment() -> Environment:
    return Environment(
        loader=FileSystemLoader(str(TEMPLATES)),
        autoescape=True,  # every template name, *.html.j2 included
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


@lru_cache(maxsize=1)
def template_version() -> str:
    """A digest of the templates and the stylesheet: a new layout is a new document."""
    digest = hashlib.sha256()
    for path in sorted(ASSETS.rglob("*")):
        if path.is_file():
            digest.update(path.relative_to(ASSETS).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def document_html(view: DocumentView) -> str:
    """The HTML of a document, every value escaped."""
    template = environment().get_template(f"{view.kind}.html.j2")
    return template.render(view=view, title=f"{TITLES[view.kind]} {view.number}")


def harfbuzz_subset_available() -> bool:
    """libharfbuzz-subset0 (Debian): without it WeasyPrint subsets fonts with fontTools,
    about 2.4x slower."""
    return ctypes.util.find_library("harfbuzz-subset") is not None


class RenderFailed(SafeMessageError):
    """WeasyPrint failed on a document (the exception's type only: its message could quote
    a client)."""


class _Worker:
    """A `python -m billing_pipeline.resources.pdf_worker` process of this process, fed one
    document at a time over its stdin/stdout."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "billing_pipeline.resources.pdf_worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self.lock = threading.Lock()
        self.ready = False

    def read(self, size: int, deadline: float) -> bytes:
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        data = b""
        while len(data) < size:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                raise TimeoutError
            chunk = os.read(fd, size - len(data))
            if not chunk:
                raise RenderFailed("the PDF worker process ended unexpectedly")
            data += chunk
        return data

    def render(self, html: str, timeout_seconds: float) -> bytes:
        assert self.process.stdin is not None
        if not self.ready:
            # The worker's start-up (imports, fonts) has a limit of its own.
            self.read(1, time.monotonic() + STARTUP_SECONDS)
            self.ready = True
        deadline = time.monotonic() + timeout_seconds
        body = html.encode()
        self.process.stdin.write(struct.pack(">I", len(body)) + body)
        self.process.stdin.flush()
        status = self.read(1, deadline)
        (size,) = struct.unpack(">I", self.read(4, deadline))
        payload = self.read(size, deadline)
        if status != b"P":
            raise RenderFailed(f"WeasyPrint failed: {payload.decode(errors='replace')}")
        return payload

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


STARTUP_SECONDS = 30.0
_workers: dict[int, _Worker] = {}
_workers_lock = threading.Lock()


def _worker() -> _Worker:
    """This process's render worker, started on first use."""
    with _workers_lock:
        worker = _workers.get(os.getpid())
        if worker is None or worker.process.poll() is not None:
            if not harfbuzz_subset_available():
                log.warning(
                    "libharfbuzz-subset0 is not installed: PDFs render about 2.4x slower "
                    "(apt-get install libharfbuzz-subset0)"
                )
            worker = _Worker()
            _workers[os.getpid()] = worker
        return worker


def worker_pid() -> int | None:
    """The process id of this process's render worker, if one runs (for the bench)."""
    worker = _workers.get(os.getpid())
    return worker.process.pid if worker is not None else None


def html_to_pdf(html: str, timeout_seconds: float, what: str) -> bytes:
    """The PDF of `html`, made in the worker; RenderTimeout (naming `what`, never a person)
    when it takes longer than `timeout_seconds`, and the worker is replaced."""
    worker = _worker()
    with worker.lock:
        try:
            return worker.render(html, timeout_seconds)
        except (TimeoutError, RenderFailed, OSError) as exc:
            worker.stop()
            if isinstance(exc, TimeoutError):
                raise RenderTimeout(
                    f"rendering {what} took longer than {timeout_seconds:g} s and was stopped"
                ) from None
            if isinstance(exc, RenderFailed):
                raise
            raise RenderFailed(f"the PDF worker failed on {what}") from None


class DocumentRenderer(dg.ConfigurableResource):
    """Makes the PDF of a bill, superbill or statement (WeasyPrint, in a worker process)."""

    timeout_seconds: float = Field(
        default=60.0, gt=0, description="A render taking longer is stopped and fails."
    )
    render_on_share: bool = Field(
        default=True,
        description="Render each document when it is shared (production). Off in simulations, "
        "where nobody reads them: a share's PDF is then rendered when first asked for, as it "
        "stood when shared.",
    )

    def html(self, view: DocumentView) -> str:
        return document_html(view)

    def render(self, view: DocumentView) -> bytes:
        return html_to_pdf(document_html(view), self.timeout_seconds, f"{view.kind} {view.number}")

    def template_version(self) -> str:
        return template_version()
