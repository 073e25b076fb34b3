"""Database failures told in words that carry no PHI: a statement cancelled by the lock or
statement timeout names its tables and the timeout; a database that cannot be reached names
its host, port and database (never the password) or its file.

`translate_errors` installs the translation on an engine (its `handle_error` event), so every
use of the engine is covered: `BillingDatabase.transact`, `engine.connect()` reads, the CLI,
the migrations.
"""

from __future__ import annotations

import re

from sqlalchemy import Engine, event, make_url
from sqlalchemy.engine import URL, ExceptionContext

from billing_pipeline.config import (
    LOCK_TIMEOUT_ENV,
    STATEMENT_TIMEOUT_ENV,
    DatabaseTimeouts,
    format_seconds,
)
from billing_pipeline.errors import SafeMessageError

LOCK_NOT_AVAILABLE = "55P03"  # lock_timeout (and NOWAIT, which we do not use)
QUERY_CANCELED = "57014"  # statement_timeout (and a cancel request)


class DatabaseBusy(SafeMessageError):
    """The server cancelled a statement that waited too long for a lock, or ran too long.
    Nothing of the transaction was kept; running the work again later is safe."""

    def __init__(self, message: str, tables: tuple[str, ...], timeout_env: str) -> None:
        super().__init__(message)
        self.tables = tables
        self.timeout_env = timeout_env


class DatabaseUnreachable(SafeMessageError):
    """The billing database could not be connected to (or its file opened)."""


# --- The tables a statement touches, from its text ------------------------------------------

_TOKEN = re.compile(
    r"""
      (?P<space>\s+)
    | (?P<comment>--[^\n]*|/\*.*?\*/)
    | (?P<string>[Ee]'(?:[^'\\]|''|\\.)*'|[BbXxNn]?'(?:[^']|'')*')
    | (?P<dollar>\$(?P<tag>[A-Za-z_]\w*)?\$.*?\$(?P=tag)?\$)
    | (?P<param>%\([^)]*\)s|%s|\?|:[A-Za-z_]\w*|\$\d+)
    | (?P<quoted>"(?:[^"]|"")*")
    | (?P<word>[A-Za-z_][\w$]*)
    | (?P<number>\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)
    | (?P<punct>.)
    """,
    re.S | re.X,
)
# A parenthesis that opens with one of these holds a statement whose FROM and JOIN name
# tables; any other (a function's arguments, as in EXTRACT(year FROM ...), a column list,
# VALUES) does not.
_STATEMENT_STARTS = {"SELECT", "WITH", "VALUES", "INSERT", "UPDATE", "DELETE"}
_TARGETS = {"FROM", "JOIN", "INTO", "UPDATE", "LOCK"}
_BEFORE_NAME = {"ONLY", "LATERAL", "TABLE"}
# Words that end a FROM (or LOCK) list: a comma after them no longer names a table.
_LIST_ENDS = {
    "WHERE", "GROUP", "ORDER", "HAVING", "LIMIT", "OFFSET", "FETCH", "UNION", "INTERSECT",
    "EXCEPT", "RETURNING", "FOR", "IN", "SET", "VALUES", "WINDOW", "ON", "USING", "SELECT",
}  # fmt: skip

Token = tuple[str, str]


def _tokens(sql: str) -> list[Token]:
    """(kind, text): words upper-cased, quoted names unquoted; spaces, comments, string
    literals and parameters left out (a literal could hold anything)."""
    tokens: list[Token] = []
    for match in _TOKEN.finditer(sql):
        kind = match.lastgroup or ""
        text = match.group()
        if kind in ("space", "comment", "string", "dollar", "tag", "param"):
            continue
        if kind == "word":
            tokens.append(("word", text.upper()))
        elif kind == "quoted":
            tokens.append(("name", text[1:-1].replace('""', '"')))
        else:
            tokens.append((kind, text))
    return tokens


def _name_at(tokens: list[Token], i: int) -> tuple[str | None, int]:
    """The name (dotted when qualified) that starts at token i, and the index after it."""
    parts: list[str] = []
    while i < len(tokens) and tokens[i][0] in ("word", "name"):
        kind, text = tokens[i]
        parts.append(text.lower() if kind == "word" else text)
        i += 1
        if i + 1 < len(tokens) and tokens[i] == ("punct", ".") and tokens[i + 1][0] != "punct":
            i += 1
            continue
        break
    return (".".join(parts) if parts else None), i


def tables_in(sql: str | None) -> tuple[str, ...]:
    """The tables a statement names after FROM, JOIN, INTO, UPDATE and LOCK [TABLE], in its
    subqueries and comma lists too, in order, each once (a WITH query's own name is not a
    table). Only the statement's text is read: never a string literal, never a parameter."""
    tokens = _tokens(sql or "")
    found: list[str] = []
    ctes: set[str] = set()
    statement_parens: list[bool] = []  # per open parenthesis: does it hold a statement?
    open_lists: set[int] = set()  # depths with an open FROM/LOCK list (a comma names more)

    def target(i: int, keyword: str) -> None:
        while i < len(tokens) and tokens[i][0] == "word" and tokens[i][1] in _BEFORE_NAME:
            i += 1
        name, after = _name_at(tokens, i)
        if name is None:
            return  # a subquery: its own FROM names its tables
        if after < len(tokens) and tokens[after] == ("punct", "(") and keyword != "INTO":
            return  # a function in FROM (generate_series(...)); INTO t (columns) is a table
        found.append(name)

    for i, token in enumerate(tokens):
        kind, text = token
        nxt = tokens[i + 1] if i + 1 < len(tokens) else ("", "")
        if token == ("punct", "("):
            statement_parens.append(nxt[0] == "word" and nxt[1] in _STATEMENT_STARTS)
            continue
        if token == ("punct", ")"):
            if statement_parens:
                statement_parens.pop()
            open_lists.discard(len(statement_parens) + 1)
            continue
        if statement_parens and not statement_parens[-1]:
            continue  # a function's arguments or a column list
        depth = len(statement_parens)
        previous = tokens[i - 1] if i > 0 else ("", "")
        if kind in ("word", "name") and nxt == ("word", "AS"):
            after = tokens[i + 2] if i + 2 < len(tokens) else ("", "")
            if after == ("punct", "(") and previous[1] in ("WITH", "RECURSIVE", ","):
                ctes.add(text.lower() if kind == "word" else text)
        if kind == "word" and text in _TARGETS:
            if text == "UPDATE" and previous[1] in ("FOR", "KEY", "DO"):
                continue  # FOR [NO KEY] UPDATE, ON CONFLICT DO UPDATE
            if text == "LOCK" and previous not in (("", ""), ("punct", ";")):
                continue  # only the LOCK statement
            if text == "FROM" and previous[1] == "DISTINCT":
                continue  # IS [NOT] DISTINCT FROM
            target(i + 1, text)
            if text in ("FROM", "LOCK"):
                open_lists.add(depth)
            else:
                open_lists.discard(depth)
        elif kind == "word" and text in _LIST_ENDS:
            open_lists.discard(depth)
        elif token == ("punct", ",") and depth in open_lists:
            target(i + 1, "FROM")
    return tuple(name for name in dict.fromkeys(found) if name not in ctes)


# --- Messages ---------------------------------------------------------------------------------


def _on_tables(tables: tuple[str, ...]) -> str:
    if not tables:
        return "a statement"
    return f"a statement on table{'s' if len(tables) > 1 else ''} {', '.join(tables)}"


def busy_for_lock(tables: tuple[str, ...], seconds: float) -> DatabaseBusy:
    return DatabaseBusy(
        f"{_on_tables(tables)} waited more than {format_seconds(seconds)} s for a lock and "
        f"was cancelled ({LOCK_TIMEOUT_ENV})",
        tables,
        LOCK_TIMEOUT_ENV,
    )


def busy_too_long(tables: tuple[str, ...], seconds: float) -> DatabaseBusy:
    return DatabaseBusy(
        f"{_on_tables(tables)} ran longer than {format_seconds(seconds)} s and was cancelled "
        f"({STATEMENT_TIMEOUT_ENV})",
        tables,
        STATEMENT_TIMEOUT_ENV,
    )


def describe_url(url: str | URL) -> str:
    """The database a URL names, for messages: `postgresql://user@host:port/name` (no
    password, no query), or `file PATH` for SQLite."""
    u = make_url(url)
    backend = u.get_backend_name()
    if backend == "sqlite":
        return f"file {u.database or ':memory:'}"
    # A new URL: `URL.set(password=None)` would keep the password (None there means "as is").
    port = u.port if u.port is not None or backend != "postgresql" or not u.host else 5432
    shown = URL.create(backend, username=u.username, host=u.host, port=port, database=u.database)
    return shown.render_as_string(hide_password=False)


def _connect_reason(exc: BaseException, password: str | None) -> str:
    """The driver's first line, without the restatement of host and port, and without the
    password should a driver ever quote it."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    reason = lines[0] if lines else type(exc).__name__
    if isinstance(exc, OSError) and exc.strerror:  # a folder that cannot be made
        reason = exc.strerror
    reason = re.sub(
        r'^connection to server at "[^"]*"(?: \([^)]*\))?, port \d+ failed:\s*', "", reason
    )
    reason = re.sub(r"^(FATAL|ERROR):\s+", "", reason)
    if password:
        reason = reason.replace(password, "***")
    return reason[:1].lower() + reason[1:]


_NO_ANSWER = ("connection refused", "timeout expired", "timed out", "could not translate host")


def unreachable(url: str | URL, exc: BaseException) -> DatabaseUnreachable:
    u = make_url(url)
    reason = _connect_reason(exc, u.password)
    if u.get_backend_name() == "sqlite":
        return DatabaseUnreachable(f"billing database {describe_url(u)} cannot be opened: {reason}")
    verb = (
        "does not answer"
        if any(s in reason.lower() for s in _NO_ANSWER)
        else "refused the connection"
    )
    return DatabaseUnreachable(f"billing database {describe_url(u)} {verb}: {reason}")


# --- On an engine -----------------------------------------------------------------------------


def translate_errors(engine: Engine, timeouts: DatabaseTimeouts | None) -> None:
    """Raise DatabaseUnreachable when the engine cannot connect, and (PostgreSQL, whose
    connections carry `timeouts`) DatabaseBusy when the server cancels a statement for its
    lock or statement timeout."""

    @event.listens_for(engine, "handle_error")
    def _translate(ctx: ExceptionContext) -> None:
        if ctx.is_pre_ping:
            return  # the pool reconnects by itself; a failed reconnect comes here again
        orig = ctx.original_exception
        if ctx.connection is None:
            raise unreachable(engine.url, orig)
        if timeouts is None:
            return
        code = getattr(orig, "pgcode", None)
        if code == LOCK_NOT_AVAILABLE and "could not obtain lock" not in str(orig):
            raise busy_for_lock(tables_in(ctx.statement), timeouts.lock_seconds)
        if code == QUERY_CANCELED and "user request" not in str(orig):
            raise busy_too_long(tables_in(ctx.statement), timeouts.statement_seconds)
