"""The PostgreSQL database each test process lends its tests (tests/conftest.py): it comes back
empty with ids from 1, and one whose schema a test changed is made anew."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine, create_engine, insert, select, text
from sqlalchemy.pool import NullPool

from billing_pipeline.db import models as m
from tests.conftest import lent_pg_database

pytestmark = pytest.mark.postgres


def _admin(url: str) -> Engine:
    from tests.conftest import _as_admin

    return create_engine(_as_admin(url), isolation_level="AUTOCOMMIT", poolclass=NullPool)


def _alert(engine: Engine, run_id: str) -> int:
    row = {
        "at": datetime(2026, 11, 30, tzinfo=UTC),
        "run_id": run_id,
        "job_name": "nightly_chain_job",
        "partitions": "2026-11-29",
        "account_ids": "",
        "failed_steps": "",
        "message": "",
        "email_status": "sent",
    }
    with engine.begin() as conn:
        return conn.execute(insert(m.RunAlert).values(row).returning(m.RunAlert.id)).scalar_one()


def test_a_lent_database_comes_back_empty_and_a_changed_one_is_made_anew() -> None:
    url = lent_pg_database()
    admin = _admin(url)
    try:
        assert _alert(admin, "run-a") == 1
        assert _alert(admin, "run-b") == 2
        with admin.connect() as conn:  # left open: the next lending ends it
            conn.execute(text("SELECT 1"))
            assert lent_pg_database() == url
        with admin.connect() as conn:
            assert conn.execute(select(m.RunAlert.run_id)).scalars().all() == []
        assert _alert(admin, "run-c") == 1  # ids start again

        with admin.connect() as conn:
            conn.execute(text("ALTER TABLE run_alerts ADD COLUMN surprise integer"))
    finally:
        admin.dispose()
    fresh = lent_pg_database()
    assert fresh != url
    admin = _admin(fresh)
    try:
        with admin.connect() as conn:
            columns = conn.execute(
                text(
                    "SELECT column_name FROM information_schema.columns "
                    "WHERE table_name = 'run_alerts'"
                )
            ).scalars()
            assert "surprise" not in set(columns)
        with _admin("x/postgres").connect() as conn:
            gone = conn.execute(
                text("SELECT count(*) FROM pg_database WHERE datname = :n"),
                {"n": url.rsplit("/", 1)[1]},
            ).scalar_one()
        assert gone == 0
    finally:
        admin.dispose()
