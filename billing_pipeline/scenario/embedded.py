"""`scenario load` on the embedded default database (no `BILLING_DATABASE_URL`).

The embedded SQLite file is the sandbox of the contract's scenarios and of anyone trying the
project: people load one scenario, simulate, report, then load the next. A scenario that names
its own accounts, and whose every record belongs to them (`self_contained`), describes a whole
world, so loading it beside another one would mix the two reports. On the embedded default,
such a file therefore goes into a new database when the embedded one already holds accounts,
and the old one is kept beside it under a dated name: nothing is deleted, and the append-only
audit log of the old database stays whole.

The new database is written under a temporary name first and takes the embedded name only once
the load has committed: a refused file leaves the old database where and as it was. A file
that refers to records loaded before (more clients or sessions for a loaded account) is added
to the database as `scenario load` always does; so is every file when `BILLING_DATABASE_URL`
is set.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from billing_pipeline.db.engine import get_engine, make_engine, upgrade
from billing_pipeline.resources.payments import Payments
from billing_pipeline.scenario.load import LoadSummary, load_scenario
from billing_pipeline.scenario.read import check_schema, read_scenario

# SQLite's companions of a database file in WAL mode.
_COMPANIONS = ("-wal", "-shm", "-journal")


@dataclass(frozen=True)
class EmbeddedLoad:
    summary: LoadSummary
    kept_as: Path | None  # where the database that already held accounts went, if it moved
    held: tuple[str, ...]  # the first account ids it held (at most HELD_SHOWN + 1)


HELD_SHOWN = 3


def accounts_in(path: Path, limit: int = HELD_SHOWN + 1) -> tuple[str, ...]:
    """A few account ids of the SQLite database at `path`; none when it is missing, empty or
    not set up."""
    if not path.is_file():
        return ()
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT id FROM accounts ORDER BY id LIMIT ?", (limit,)).fetchall()
    except sqlite3.DatabaseError:  # no accounts table yet
        return ()
    finally:
        conn.close()
    return tuple(str(r[0]) for r in rows)


def _move(source: Path, target: Path) -> None:
    os.replace(source, target)
    for suffix in _COMPANIONS:
        companion = source.with_name(source.name + suffix)
        if companion.exists():
            os.replace(companion, target.with_name(target.name + suffix))


def _remove(path: Path) -> None:
    for each in (path, *(path.with_name(path.name + s) for s in _COMPANIONS)):
        each.unlink(missing_ok=True)


def kept_name(path: Path, now: datetime) -> Path:
    """`billing.db` → `billing.20261130T091500Z.db` (a second one within the second gets `-2`)."""
    stamp = now.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    candidate = path.with_name(f"{path.stem}.{stamp}{path.suffix}")
    n = 2
    while candidate.exists():
        candidate = path.with_name(f"{path.stem}.{stamp}-{n}{path.suffix}")
        n += 1
    return candidate


def self_contained(doc: dict[str, Any]) -> bool:
    """The file names accounts and everything in it belongs to them: its billing contacts and
    clients to its own accounts, its sessions to its own clients, its changes to its own
    records. Such a file is a world of its own; any other adds to what is loaded."""
    accounts = {a["id"] for a in doc.get("accounts", [])}
    clients = {c["id"] for c in doc.get("clients", [])}
    owned = {
        "account_id": accounts,
        "client_id": clients,
        "session_id": {s["id"] for s in doc.get("sessions", [])},
        "billing_contact_id": {b["id"] for b in doc.get("billing_contacts", [])} | {None},
    }
    records = [*doc.get("billing_contacts", []), *doc.get("clients", [])]
    records += [*doc.get("sessions", []), *doc.get("changes", [])]
    return bool(accounts) and all(
        record[key] in ids for record in records for key, ids in owned.items() if key in record
    )


def load_into_embedded(scenario: Path, database: Path, payments: Payments) -> EmbeddedLoad:
    """Load `scenario` into the embedded database file `database` as the module says. Raises
    what `load_scenario` raises, with the embedded database left as it was."""
    doc = read_scenario(scenario)
    check_schema(doc)  # a bad file is refused before any file moves
    assert isinstance(doc, dict)  # the schema says so
    held = accounts_in(database)
    if not held or not self_contained(doc):
        engine = get_engine(f"sqlite:///{database}")
        upgrade(engine)
        return EmbeddedLoad(load_scenario(scenario, engine, payments), None, ())

    loading = database.with_name(f"{database.stem}.loading{database.suffix}")
    _remove(loading)  # left by a load that was killed
    engine = make_engine(f"sqlite:///{loading}")
    try:
        upgrade(engine)
        summary = load_scenario(scenario, engine, payments)
    except BaseException:
        engine.dispose()
        _remove(loading)
        raise
    engine.dispose()
    get_engine(f"sqlite:///{database}").dispose()  # this process's connections to the old file
    kept = kept_name(database, datetime.now(UTC))
    _move(database, kept)
    _move(loading, database)
    return EmbeddedLoad(summary, kept, held)
