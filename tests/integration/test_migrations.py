"""The migrations, from nothing, make exactly the tables and columns of db/models.py, on SQLite
and PostgreSQL; the newest one goes down and up again. (Other PostgreSQL tests start from a
copy of a migrated template database, made by these same migrations.)"""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import inspect

from billing_pipeline.db.engine import (
    alembic_config,
    current_revision,
    head_revision,
    make_engine,
    upgrade,
)
from billing_pipeline.db.models import Base
from tests.conftest import create_pg_database, drop_pg_database


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    url = create_pg_database()
    yield url
    drop_pg_database(url)


def _schema(engine) -> dict[str, set[str]]:
    found = inspect(engine)
    return {
        table: {c["name"] for c in found.get_columns(table)}
        for table in found.get_table_names()
        if table != "alembic_version"
    }


@pytest.mark.slow
def test_migrations_from_nothing_make_the_models_tables(empty_url: str) -> None:
    engine = make_engine(empty_url)
    try:
        assert current_revision(engine) is None
        assert upgrade(engine) is True
        assert current_revision(engine) == head_revision()
        assert upgrade(engine) is False  # already there
        models = {t.name: {c.name for c in t.columns} for t in Base.metadata.sorted_tables}
        assert _schema(engine) == models
        command.downgrade(alembic_config(engine), "-1")
        assert current_revision(engine) != head_revision()
        assert upgrade(engine) is True
        assert _schema(engine) == models
    finally:
        engine.dispose()
