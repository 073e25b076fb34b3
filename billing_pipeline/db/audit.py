"""The audit log: one append-only row per read of client data, or per refused attempt.

Each row names who (the operating-system user and the database user, or the Dagster run), which
practice, which client ids (never names), the action, when and the outcome. `row_hash` is the
SHA-256 of the row's fields and the previous row's hash, so editing or deleting a row breaks the
chain at the row edited, or at the row after the one deleted; `verify` names the first broken
link. On PostgreSQL the application roles may only INSERT and SELECT it (migration 0007); rows
are appended under a transaction-scoped advisory lock, so concurrent writers chain in order.
Reading the audit log is not itself a read of client data and is not audited.
"""

from __future__ import annotations

import getpass
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, Row, insert, select, text

from billing_pipeline.db import models as m

GENESIS = "0" * 64
# pg_advisory_xact_lock key: any constant of our own ("audit" in ASCII).
_LOCK_KEY = 0x6175646974


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: datetime
    actor: str
    account_id: str | None
    action: str
    client_ids: tuple[str, ...]
    outcome: str
    prev_hash: str
    row_hash: str

    def as_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "at": self.at.isoformat(),
            "actor": self.actor,
            "account_id": self.account_id,
            "action": self.action,
            "client_ids": list(self.client_ids),
            "outcome": self.outcome,
            "row_hash": self.row_hash,
        }


@dataclass(frozen=True)
class Verification:
    rows: int
    broken_id: int | None = None
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.broken_id is None


def chain_hash(
    prev_hash: str,
    at: datetime,
    actor: str,
    account_id: str | None,
    action: str,
    client_ids: str,
    outcome: str,
) -> str:
    fields = [
        prev_hash,
        at.astimezone(UTC).isoformat(timespec="microseconds"),
        actor,
        account_id,
        action,
        client_ids,
        outcome,
    ]
    return hashlib.sha256(json.dumps(fields, separators=(",", ":")).encode()).hexdigest()


def os_actor(conn: Connection) -> str:
    """Who runs this process: the operating-system user, and the database user on PostgreSQL."""
    try:
        who = f"os:{getpass.getuser()}"
    except (KeyError, OSError):  # no passwd entry (a container's arbitrary uid)
        who = "os:?"
    if conn.dialect.name == "postgresql":
        who += f" db:{conn.execute(text('SELECT session_user')).scalar_one()}"
    return who


def append(
    conn: Connection,
    action: str,
    client_ids: Iterable[str],
    outcome: str,
    *,
    account_id: str | None = None,
    actor: str | None = None,
) -> int:
    """Append one row inside `conn`'s transaction (commit it before showing anything)."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
    # SQLite: the engine begins every transaction IMMEDIATE, so writers already queue.
    prev = conn.execute(
        select(m.AuditLog.row_hash).order_by(m.AuditLog.id.desc()).limit(1)
    ).scalar()
    prev_hash = prev or GENESIS
    at = datetime.now(UTC)
    who = actor or os_actor(conn)
    ids = json.dumps(sorted(set(client_ids)))
    row_hash = chain_hash(prev_hash, at, who, account_id, action, ids, outcome)
    return int(
        conn.execute(
            insert(m.AuditLog)
            .values(
                at=at,
                actor=who,
                account_id=account_id,
                action=action,
                client_ids=ids,
                outcome=outcome,
                prev_hash=prev_hash,
                row_hash=row_hash,
            )
            .returning(m.AuditLog.id)
        ).scalar_one()
    )


def record(
    engine: Engine,
    action: str,
    client_ids: Iterable[str],
    outcome: str,
    *,
    account_id: str | None = None,
    actor: str | None = None,
) -> int:
    """Append one row in a transaction of its own, committed when this returns."""
    with engine.begin() as conn:
        return append(conn, action, client_ids, outcome, account_id=account_id, actor=actor)


def _entry(row: Row[Any]) -> AuditEntry:
    return AuditEntry(
        id=row.id,
        at=row.at,
        actor=row.actor,
        account_id=row.account_id,
        action=row.action,
        client_ids=tuple(json.loads(row.client_ids)),
        outcome=row.outcome,
        prev_hash=row.prev_hash,
        row_hash=row.row_hash,
    )


def entries(
    conn: Connection, client_id: str | None = None, since: datetime | None = None
) -> list[AuditEntry]:
    """The rows, oldest first: those naming `client_id`, at or after `since`."""
    query = select(m.AuditLog).order_by(m.AuditLog.id)
    if since is not None:
        query = query.where(m.AuditLog.at >= since)
    found = (_entry(row) for row in conn.execute(query))
    return [e for e in found if client_id is None or client_id in e.client_ids]


def verify(conn: Connection) -> Verification:
    """Walk the chain from the first row; the first row whose link or hash does not hold."""
    expected_prev = GENESIS
    count = 0
    for row in conn.execute(select(m.AuditLog).order_by(m.AuditLog.id)):
        count += 1
        if row.prev_hash != expected_prev:
            return Verification(
                count,
                row.id,
                f"audit row {row.id}: its link to the row before does not hold "
                "(a row before it was deleted or its hash changed)",
            )
        again = chain_hash(
            row.prev_hash,
            row.at,
            row.actor,
            row.account_id,
            row.action,
            row.client_ids,
            row.outcome,
        )
        if again != row.row_hash:
            return Verification(
                count, row.id, f"audit row {row.id}: its contents do not match its hash (edited)"
            )
        expected_prev = row.row_hash
    return Verification(count)


def client_ids_in(shown: object) -> list[str]:
    """Every `client_id` value anywhere in a report-like structure (dicts and lists)."""
    found: set[str] = set()
    stack = [shown]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            value = item.get("client_id")
            if isinstance(value, str):
                found.add(value)
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return sorted(found)
