"""Documents people can hold: render a bill, superbill or statement when it is shared or asked
for, and store its PDF once per content.

Rendering (~0.1-0.3 s of CPU) happens outside any database transaction: the view is read, its
content key looked up, and only a content not rendered before is rendered and then stored
(a concurrent run that stored the same content first wins; nothing is rendered twice by one
run, and the stored PDF is the same content either way).
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from sqlalchemy import Engine

from billing_pipeline.db import audit
from billing_pipeline.db import documents as q
from billing_pipeline.db.access import practice_of_document
from billing_pipeline.domain.document_views import document_number, export_file_name
from billing_pipeline.resources.renderer import DocumentRenderer


def render_document(
    engine: Engine,
    renderer: DocumentRenderer,
    kind: str,
    document_id: int,
    as_of: datetime,
    actor: str | None = None,
) -> q.StoredDocument:
    """The stored PDF of a document as it stands at `as_of`, rendered only if that content
    was never rendered. A render reads the client's data: it is audited (by `actor`, the
    Dagster run, or else this process's users) before the PDF is stored."""
    with engine.connect() as conn:
        view = q.document_view(conn, kind, document_id, as_of)
        key = q.view_key(view, renderer.template_version())
        found = q.find_rendering(conn, kind, document_id, key)
    if found is not None:
        return found
    pdf = renderer.render(view)
    with engine.begin() as conn:
        audit.append(
            conn,
            f"render_pdf:{kind}",
            [view.client.id],
            "rendered",
            account_id=practice_of_document(conn, kind, document_id),
            actor=actor,
        )
        return q.store_rendering(conn, view, document_id, key, pdf)


def render_share(
    engine: Engine,
    renderer: DocumentRenderer,
    delivery_id: int,
    revision: int = 0,
    actor: str | None = None,
) -> q.StoredDocument | None:
    """Render a portal share's document as it stood when shared (a bill paid by then says
    PAID) and attach the PDF to the share."""
    with engine.connect() as conn:
        share = q.share_for(conn, delivery_id, revision)
    if share is None:
        return None
    stored = render_document(
        engine, renderer, share.document_type, share.document_id, share.shared_at, actor
    )
    with engine.begin() as conn:
        q.attach_pdf(conn, share.share_id, stored.sha256)
    return stored


def pdf_of(engine: Engine, stored: q.StoredDocument) -> bytes:
    with engine.connect() as conn:
        return q.pdf_bytes(conn, stored.sha256)


def export_documents(
    engine: Engine,
    renderer: DocumentRenderer,
    directory: Path,
    client_id: str | None = None,
    month: str | None = None,
) -> list[Path]:
    """Write the PDFs of every bill, superbill and statement (of one client, of one month) into
    `directory` for people to read, each as it was shared (else as it stands now), named by
    practice, kind, client id, date and number. Readable by the owner only: they hold PHI."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    with engine.connect() as conn:
        items = q.documents_for_export(conn, client_id, month)
    # Audited, and committed, before any file is written (a refused export raises before).
    audit.record(
        engine,
        "documents_export",
        [i.client_id for i in items],
        f"exporting {len(items)} document(s)",
        account_id=_one({i.account_id for i in items}),
    )
    written = []
    for item in items:
        stored = render_document(engine, renderer, item.document_type, item.document_id, item.as_of)
        if item.share_id is not None:
            with engine.begin() as conn:
                q.attach_pdf(conn, item.share_id, stored.sha256)
        name = export_file_name(
            item.practice_name,
            item.document_type,
            item.client_id,
            item.day,
            document_number(item.document_type, item.document_id),
        )
        path = directory / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(pdf_of(engine, stored))
        written.append(path)
    return written


def _one(values: set[str]) -> str | None:
    return next(iter(values)) if len(values) == 1 else None
