"""Many rows into one table in one statement.

On PostgreSQL the rows go as one array per column, `INSERT ... SELECT * FROM unnest(...)`:
one statement whatever the number of rows, the values adapted by the driver in C, instead of
SQLAlchemy building one parameter set per row for its multi-row VALUES (most of the cost of
writing a night's 250,000 resolved settings). Each column's values pass through the column
type's own bind processing first (a UTC instant becomes the naive UTC the column holds), and
the database checks every row as for any INSERT (keys, foreign keys, row-level security).
Elsewhere (SQLite) it is SQLAlchemy's executemany.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, Table, insert, text

from billing_pipeline.db.models import Base


def insert_rows(conn: Connection, model: type[Base], rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert `rows` (dicts with the same keys, column names of `model`)."""
    if not rows:
        return
    if conn.dialect.name != "postgresql":
        conn.execute(insert(model), list(rows))
        return
    table = model.__table__
    assert isinstance(table, Table)  # a declarative class's table (typed as a FromClause)
    names = list(rows[0])
    arrays: dict[str, list[Any]] = {}
    casts = []
    for i, name in enumerate(names):
        column = table.c[name]
        process = column.type.bind_processor(conn.dialect)
        values = [row[name] for row in rows]
        arrays[f"c{i}"] = [process(v) for v in values] if process else values
        casts.append(f"CAST(:c{i} AS {column.type.compile(dialect=conn.dialect)}[])")
    quoted = ", ".join(conn.dialect.identifier_preparer.quote(n) for n in names)
    conn.execute(
        text(
            f"INSERT INTO {conn.dialect.identifier_preparer.format_table(table)} ({quoted}) "
            f"SELECT * FROM unnest({', '.join(casts)})"
        ),
        arrays,
    )
