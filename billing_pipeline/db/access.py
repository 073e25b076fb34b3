"""Which practice a transaction works in (PostgreSQL row-level security, migration 0007).

On PostgreSQL the practice is a transaction-local setting (`set_config('app.account_id', id,
true)`): it ends with the transaction, so a pooled connection handed to the next caller never
keeps the previous practice. A staff login sees the practice it set only if `practice_staff`
maps it there, and nothing when it set none; the pipeline's service role sees every practice
when it set none (the nightly run lists accounts and loops over them) and only that one when it
set one. SQLite has no roles and no row-level security: it is the single-practice embedded
default, and `in_practice` does nothing there.
"""

from __future__ import annotations

from sqlalchemy import Connection, select, text

from billing_pipeline.db import models as m

OWNER_ROLE = "billing_pipeline_owner"
SERVICE_ROLE = "billing_pipeline_service"
STAFF_ROLE = "billing_pipeline_staff"
SETTING = "app.account_id"


def in_practice(conn: Connection, account_id: str) -> None:
    """Confine the rest of `conn`'s current transaction to practice `account_id`."""
    if conn.dialect.name != "postgresql":
        return
    if not conn.in_transaction():
        raise RuntimeError("in_practice needs a transaction: the practice is set per transaction")
    conn.execute(
        text("SELECT set_config(:name, :value, true)"), {"name": SETTING, "value": account_id}
    )


def current_practice(conn: Connection) -> str | None:
    """The practice the current transaction set, if any (PostgreSQL; None on SQLite)."""
    if conn.dialect.name != "postgresql":
        return None
    value = conn.execute(text("SELECT current_setting(:name, true)"), {"name": SETTING}).scalar()
    return value or None


def practice_of_client(conn: Connection, client_id: str) -> str | None:
    """The practice a client belongs to (None for a client unknown, or not visible here)."""
    return conn.execute(select(m.Client.account_id).where(m.Client.id == client_id)).scalar()


_DOCUMENT_TABLES = {
    "bill": m.Bill.__table__,
    "superbill": m.Superbill.__table__,
    "statement": m.Statement.__table__,
}


def practice_of_document(conn: Connection, kind: str, document_id: int) -> str | None:
    """The practice of a bill, superbill or statement (None if unknown here)."""
    table = _DOCUMENT_TABLES[kind]
    found = conn.execute(select(table.c.account_id).where(table.c.id == document_id)).scalar()
    return None if found is None else str(found)
