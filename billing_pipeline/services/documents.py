"""Documents people can hold: render a bill, superbill or statement when it is shared or asked
for, and store its PDF once per content.

Rendering (~0.1-0.3 s of CPU) happens outside any database transaction: the view is read, its
content key looked up, and only a content not rendered before is rendered and then stored
(a concurrent run that stored the same content first wins; nothing is rendered twice by one
run, and the stored PDF is the same content either way).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Engine

from billing_pipeline.db import documents as q
from billing_pipeline.resources.renderer import DocumentRenderer


def render_document(
    engine: Engine, renderer: DocumentRenderer, kind: str, document_id: int, as_of: datetime
) -> q.StoredDocument:
    """The stored PDF of a document as it stands at `as_of`, rendered only if that content
    was never rendered."""
    with engine.connect() as conn:
        view = q.document_view(conn, kind, document_id, as_of)
        key = q.view_key(view, renderer.template_version())
        found = q.find_rendering(conn, kind, document_id, key)
    if found is not None:
        return found
    pdf = renderer.render(view)
    with engine.begin() as conn:
        return q.store_rendering(conn, view, document_id, key, pdf)


def render_share(
    engine: Engine, renderer: DocumentRenderer, delivery_id: int, revision: int = 0
) -> q.StoredDocument | None:
    """Render a portal share's document as it stood when shared (a bill paid by then says
    PAID) and attach the PDF to the share."""
    with engine.connect() as conn:
        share = q.share_for(conn, delivery_id, revision)
    if share is None:
        return None
    stored = render_document(
        engine, renderer, share.document_type, share.document_id, share.shared_at
    )
    with engine.begin() as conn:
        q.attach_pdf(conn, share.share_id, stored.sha256)
    return stored


def pdf_of(engine: Engine, stored: q.StoredDocument) -> bytes:
    with engine.connect() as conn:
        return q.pdf_bytes(conn, stored.sha256)
