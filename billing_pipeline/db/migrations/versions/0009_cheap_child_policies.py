"""Row-level security on child tables by the parent's primary key (EXISTS), not `IN (SELECT ...)`

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30 06:00:00

PostgreSQL only. 0007 protects the tables without `account_id` through their parent:
`session_id IN (SELECT id FROM sessions)`. The planner costs that subquery as a scan of the
whole parent (800,000 sessions at the bench's `ehr` size), so even a read of 500 services by
session id was costed in the millions, and that cost switched on PostgreSQL's JIT: ~0.3 s of
compilation for a query that takes 30 ms (90 s of a 170 s `eligible_sessions` at `ehr`).

The same visibility, written as a lookup of the parent by its primary key:
`EXISTS (SELECT 1 FROM sessions p WHERE p.id = session_services.session_id)`, the parent still
under its own policy. For a child whose key is NULL both forms are false; otherwise the row is
visible exactly when its parent is. `document_files` keeps its 0007 policy: its parent column
(`documents.content_sha256`) is not a key.
"""

from collections.abc import Callable

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

SERVICE = "billing_pipeline_service"
STAFF = "billing_pipeline_staff"

# child table -> [(the child's column, the parent table, a condition on the child or "")]: the
# row is visible when one of its parents (by `id`) is.
CHILDREN: dict[str, list[tuple[str, str, str]]] = {
    "diagnoses": [("client_id", "clients", "")],
    "sessions": [("client_id", "clients", "")],
    "portal_shares": [("client_id", "clients", "")],
    "session_services": [("session_id", "sessions", "")],
    "bill_sessions": [("bill_id", "bills", "")],
    "bill_lines": [("bill_id", "bills", "")],
    "autopay_attempt_bills": [("attempt_id", "autopay_attempts", "")],
    "superbill_sessions": [("superbill_id", "superbills", "")],
    "documents": [
        ("document_id", "bills", "document_type = 'bill'"),
        ("document_id", "superbills", "document_type = 'superbill'"),
        ("document_id", "statements", "document_type = 'statement'"),
    ],
}


def _exists(table: str, column: str, parent: str, when: str) -> str:
    found = f"EXISTS (SELECT 1 FROM {parent} p WHERE p.id = {table}.{column})"
    return f"({when} AND {found})" if when else found


def _in(_table: str, column: str, parent: str, when: str) -> str:
    found = f"{column} IN (SELECT id FROM {parent})"
    return f"({when} AND {found})" if when else found


def _set(form: Callable[[str, str, str, str], str]) -> None:
    for table, parents in CHILDREN.items():
        rows = " OR ".join(form(table, *p) for p in parents)
        service = f"billing_practice() IS NULL OR ({rows})"
        op.execute(
            f"ALTER POLICY staff_own_practice ON {table} TO {STAFF} "
            f"USING ({rows}) WITH CHECK ({rows})"
        )
        op.execute(
            f"ALTER POLICY service_all_or_set_practice ON {table} TO {SERVICE} "
            f"USING ({service}) WITH CHECK ({service})"
        )


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _set(_exists)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _set(_in)
