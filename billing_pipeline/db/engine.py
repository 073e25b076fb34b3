"""Engines and schema migrations for the billing database (SQLite or PostgreSQL)."""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, event, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, ProgrammingError
from sqlalchemy.pool import ConnectionPoolEntry

from billing_pipeline.config import (
    DATABASE_URL_ENV,
    DatabaseTimeouts,
    database_timeouts,
    normalize_database_url,
    redact_url,
)
from billing_pipeline.db.errors import translate_errors, unreachable
from billing_pipeline.errors import SafeMessageError, SettingError

MIGRATIONS = Path(__file__).with_name("migrations")
_lock = threading.Lock()
_engines: dict[str, Engine] = {}


def _sqlite_pragmas(dbapi_connection: sqlite3.Connection, _record: ConnectionPoolEntry) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.close()


def make_engine(url: str) -> Engine:
    url = normalize_database_url(url)
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            try:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise unreachable(url, exc) from None
        # SQLite: BEGIN IMMEDIATE so that writers queue instead of failing halfway through a
        # transaction; a small pool, since opening a file connection costs more than the query.
        engine = create_engine(
            url,
            pool_size=2,
            max_overflow=8,
            connect_args={"timeout": 30, "check_same_thread": False},
        )
        event.listen(engine, "connect", _sqlite_pragmas)

        @event.listens_for(engine, "connect")
        def _no_autobegin(
            dbapi_connection: sqlite3.Connection, _record: ConnectionPoolEntry
        ) -> None:
            dbapi_connection.isolation_level = None

        @event.listens_for(engine, "begin")
        def _begin_immediate(conn: Connection) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        translate_errors(engine, None)
        return engine
    if not url.startswith("postgresql"):
        engine = create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10)
        translate_errors(engine, None)
        return engine
    # PostgreSQL: every connection waits at most BILLING_DB_LOCK_TIMEOUT_SECONDS for a lock and
    # runs a statement at most BILLING_DB_STATEMENT_TIMEOUT_SECONDS; a cancelled statement is
    # raised as DatabaseBusy naming its tables (db/errors.py).
    timeouts = database_timeouts()
    engine = create_engine(
        url,
        pool_pre_ping=True,
        pool_size=5,
        max_overflow=10,
        connect_args=postgres_connect_args(url, timeouts),
    )
    translate_errors(engine, timeouts)
    return engine


CONNECT_TIMEOUT_SECONDS = 10


def postgres_connect_args(url: str, timeouts: DatabaseTimeouts) -> dict[str, object]:
    """psycopg2 arguments: the timeouts (and JIT off) as server settings (after any `options`
    of the URL's own), and a connect timeout unless the URL has one (a host that drops packets would
    otherwise keep a run waiting for minutes before it says the database does not answer)."""
    query = make_url(url).query
    own = query.get("options")
    own = " ".join(own) if isinstance(own, tuple) else own
    # No JIT: the night's statements are many and short, and under row-level security their
    # estimated costs are far above their real ones, so JIT compiled (~0.3 s) for queries
    # that take milliseconds (docs/SCALING.md).
    ours = (
        f"-c lock_timeout={round(timeouts.lock_seconds * 1000)} "
        f"-c statement_timeout={round(timeouts.statement_seconds * 1000)} -c jit=off"
    )
    args: dict[str, object] = {"options": f"{own} {ours}" if own else ours}
    if "connect_timeout" not in query:
        args["connect_timeout"] = CONNECT_TIMEOUT_SECONDS
    return args


class BadDatabaseUrl(SettingError):
    """The billing database URL cannot be used (it does not parse, or names a driver that is
    not installed). The URL is shown with its password masked."""


def get_engine(url: str) -> Engine:
    """One engine per URL per process, created on first use."""
    url = normalize_database_url(url)
    with _lock:
        if url not in _engines:
            try:
                _engines[url] = make_engine(url)
            except (ArgumentError, NoSuchModuleError) as exc:
                raise BadDatabaseUrl(
                    f"the billing database URL {redact_url(url)} cannot be used "
                    f"({type(exc).__name__}: {_first_line(exc)}); set {DATABASE_URL_ENV} to "
                    "a URL such as postgresql://user@host:5432/billing or "
                    "sqlite:////path/to/billing.db"
                ) from None
        return _engines[url]


def _first_line(exc: BaseException) -> str:
    # SQLAlchemy's own words about the URL's form or driver (never a row: nothing was read),
    # without any copy of the URL it may quote.
    text = str(exc).split("\n", 1)[0]
    return text.split(" from given URL string", 1)[0][:200]


class DatabaseNotSetUp(SafeMessageError):
    """A command that reads the billing database was pointed at one that was never set up
    (no such SQLite file, or no migration applied): refused, and nothing is created."""

    exit_code = 2


def set_up_engine(url: str) -> Engine:
    """An engine on a billing database that has been set up, brought to the newest migration
    if it is behind. A SQLite file that does not exist is not created, and a database with no
    migration applied is not migrated: both are refused (DatabaseNotSetUp), naming the
    database without its password and the commands that set one up."""
    url = normalize_database_url(url)
    hint = (
        "set it up with `billing-pipeline scenario load FILE` (or `billing-pipeline db "
        "upgrade`), or point "
        f"{DATABASE_URL_ENV} at the billing database"
        + ("" if os.environ.get(DATABASE_URL_ENV) else f" ({DATABASE_URL_ENV} is not set)")
    )
    parsed = make_url(url) if _parses(url) else None
    if parsed is not None and parsed.get_backend_name() == "sqlite":
        path = Path(parsed.database or ":memory:")
        # Nothing there, and nothing in the way of making it: never set up. (A folder at the
        # path, or a file where a folder should be, is said as the file that cannot be opened.)
        if (
            str(path) != ":memory:"
            and not path.exists()
            and not any(p.exists() and not p.is_dir() for p in path.parents)
        ):
            raise DatabaseNotSetUp(f"the billing database {redact_url(url)} does not exist: {hint}")
    engine = get_engine(url)
    if current_revision(engine) is None:
        raise DatabaseNotSetUp(
            f"the billing database {redact_url(url)} has not been set up (no migration "
            f"applied): {hint}"
        )
    upgrade(engine)
    return engine


def _parses(url: str) -> bool:
    try:
        make_url(url)
    except ArgumentError:
        return False
    return True


def dispose_engines() -> None:
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


def alembic_config(engine: Engine) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["engine"] = engine
    return cfg


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str | None:
    return ScriptDirectory(str(MIGRATIONS)).get_current_head()


class SchemaBehind(SafeMessageError):
    """The billing database is not at the newest migration: Dagster's resources refuse to run
    on it rather than migrate it from inside a run (migrations are a deploy step)."""

    def __init__(self, url: str, current: str | None, head: str | None) -> None:
        super().__init__(
            f"the billing database {redact_url(url)} is at migration {current or 'none'}, "
            f"this code needs {head}: run `billing-pipeline db upgrade` (scripts/setup.sh "
            "does) before starting Dagster"
        )


def require_current(engine: Engine) -> None:
    """Raise SchemaBehind unless the database is at the newest migration."""
    current, head = current_revision(engine), head_revision()
    if current != head:
        raise SchemaBehind(engine.url.render_as_string(hide_password=False), current, head)


class NotAllowedToMigrate(SafeMessageError):
    """The schema is behind the code and this login may not change it (the service role)."""


def upgrade(engine: Engine) -> bool:
    """Bring the schema to the newest migration; False when it already was. On PostgreSQL the
    pipeline's service role may not change the schema (migration 0007): a schema behind the
    code is then reported, naming both revisions, for the owner to migrate."""
    found = current_revision(engine)
    if found == head_revision():
        return False
    with _lock:
        try:
            command.upgrade(alembic_config(engine), "head")
        except ProgrammingError as exc:
            if getattr(exc.orig, "pgcode", None) != "42501":  # insufficient_privilege
                raise
            raise NotAllowedToMigrate(
                f"the billing database is at revision {found}, the code needs "
                f"{head_revision()}, and {engine.url.username} may not change the schema: "
                "run `billing-pipeline db upgrade` with the owner's URL"
            ) from None
    return True
