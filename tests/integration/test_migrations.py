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


def test_resources_refuse_a_database_behind_and_db_upgrade_fixes_it(
    empty_url: str, tmp_path: Path
) -> None:
    """Migrations are a deploy step: Dagster's billing database resource checks the revision on
    first use and refuses, with a message naming `billing-pipeline db upgrade`, a database
    that is empty or one migration behind; it never migrates from inside a run. `db upgrade`
    then brings it to the newest migration and the resource runs."""
    import dagster as dg

    from billing_pipeline.db.engine import SchemaBehind, dispose_engines, get_engine
    from billing_pipeline.definitions import defs
    from billing_pipeline.resources.clock import Clock
    from billing_pipeline.resources.database import BillingDatabase
    from tests.contract.runner import cli_in_process

    env = {"BILLING_DATABASE_URL": empty_url, "BILLING_DATA_DIR": str(tmp_path / "data")}
    try:
        with pytest.raises(SchemaBehind, match=r"billing-pipeline db upgrade") as refused:
            BillingDatabase(url=empty_url).engine  # noqa: B018  # the property is the check
        assert "migration none" in str(refused.value)
        assert current_revision(get_engine(empty_url)) is None  # it did not migrate

        assert cli_in_process(env, "db", "upgrade").returncode == 0
        command.downgrade(alembic_config(get_engine(empty_url)), "-1")
        # The catch-up sensor, as the daemon evaluates it, refuses with the same message.
        sensor = defs.resolve_sensor_def("launch_due_nights")
        with (
            dg.DagsterInstance.ephemeral() as instance,
            dg.build_sensor_context(
                instance=instance,
                resources={"db": BillingDatabase(url=empty_url), "clock": Clock()},
            ) as context,
            pytest.raises(SchemaBehind, match=r"needs .* run `billing-pipeline db upgrade`"),
        ):
            sensor(context)

        done = cli_in_process(env, "db", "upgrade")
        assert done.returncode == 0 and "upgraded to" in done.stdout, done.stdout
        BillingDatabase(url=empty_url).engine  # noqa: B018
        assert current_revision(get_engine(empty_url)) == head_revision()
    finally:
        dispose_engines()
