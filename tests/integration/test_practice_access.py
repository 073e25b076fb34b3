"""Practices isolated on PostgreSQL by row-level security (migration 0007, db/access.py).

Two practices side by side; a staff login mapped to practice A works in a transaction that set
A. Everything runs against a real server as real roles: the service role the pipeline logs in
as, a staff login in the staff group, and the superuser only to make that login.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from alembic import command
from sqlalchemy import Engine, create_engine, delete, func, insert, select, text, update
from sqlalchemy.exc import ProgrammingError

from billing_pipeline.db import models as m
from billing_pipeline.db.access import SERVICE_ROLE, STAFF_ROLE, in_practice
from billing_pipeline.db.engine import (
    NotAllowedToMigrate,
    alembic_config,
    current_revision,
    head_revision,
    make_engine,
    upgrade,
)
from tests.conftest import as_role, create_pg_database, drop_pg_database

pytestmark = pytest.mark.postgres

STAFF_A = "billing_pipeline_test_staff_a"  # a login of the cluster, made if missing
APPLICATION_ROLES = (SERVICE_ROLE, STAFF_ROLE, STAFF_A)
# Tables that hold no practice's rows: the migration's version, the audit log (ids only, one
# chain for all practices; staff have no access to it) and the staff-to-practice mapping
# (owner only), and the alerts of failed runs (job, run and practice ids, several practices per
# row; staff have no access to them).
NOT_PRACTICE_TABLES = {"alembic_version", "audit_log", "practice_staff", "run_alerts"}
NOW = datetime(2026, 11, 1, 12, tzinfo=UTC)


def _account(account_id: str) -> dict[str, object]:
    return {
        "id": account_id,
        "name": f"Practice {account_id}",
        "timezone": "America/New_York",
        "bill_creation": "daily",
        "superbill_day_of_month": 1,
        "autopay_enabled": False,
    }


def _client(client_id: str, account_id: str) -> dict[str, object]:
    return {
        "id": client_id,
        "account_id": account_id,
        "name": f"Client {client_id}",
        "created_at": NOW,
        "auto_bill": True,
        "superbills_enabled": False,
        "autopay_enabled": False,
        "share_bills": False,
        "bill_delay_minutes": 0,
        "share_superbills": False,
        "superbill_delay_minutes": 0,
        "share_statements": False,
        "statement_delay_minutes": 0,
    }


@pytest.fixture
def databases() -> Iterator[tuple[str, str, Engine]]:
    """(service URL, staff A URL, superuser engine) on a new migrated database with practices
    A and B, each with a client, a session and a diagnosis; staff A mapped to practice A."""
    service_url = create_pg_database(migrated=True)
    admin = make_engine(as_role(service_url, "postgres"))
    with admin.begin() as conn:
        conn.execute(
            text(
                f"""DO $$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{STAFF_A}') THEN
    CREATE ROLE {STAFF_A} LOGIN NOSUPERUSER NOBYPASSRLS IN ROLE {STAFF_ROLE};
  END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
END $$"""
            )
        )
    service = make_engine(service_url)
    with service.begin() as conn:  # the service role, across practices, seeds both
        for practice in ("A", "B"):
            conn.execute(insert(m.Account).values(**_account(practice)))
            conn.execute(insert(m.Client).values(**_client(f"c{practice}", practice)))
            conn.execute(
                insert(m.SessionRow).values(
                    id=f"s{practice}",
                    client_id=f"c{practice}",
                    starts_at=NOW,
                    status="attended",
                    source="native",
                )
            )
            conn.execute(
                insert(m.Diagnosis).values(client_id=f"c{practice}", position=1, icd10_code="F41.1")
            )
    with admin.begin() as conn:  # the mapping belongs to the owner, not to the application
        conn.execute(insert(m.PracticeStaff).values(db_login=STAFF_A, account_id="A"))
    service.dispose()
    try:
        yield service_url, as_role(service_url, STAFF_A), admin
    finally:
        admin.dispose()
        drop_pg_database(service_url)


def _count(conn, table) -> int:
    return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def test_staff_of_practice_a_never_see_or_change_practice_b(databases) -> None:
    _, staff_url, _ = databases
    staff = create_engine(staff_url)
    try:
        with staff.begin() as conn:
            in_practice(conn, "A")
            assert conn.execute(select(m.Client.id)).scalars().all() == ["cA"]
            assert conn.execute(select(m.Account.id)).scalars().all() == ["A"]
            # Tables without account_id follow their parent (clients, then sessions).
            assert conn.execute(select(m.SessionRow.id)).scalars().all() == ["sA"]
            assert conn.execute(select(m.Diagnosis.client_id)).scalars().all() == ["cA"]
            assert (
                _count(
                    conn, m.Client.__table__.select().where(m.Client.account_id == "B").subquery()
                )
                == 0
            )
            gone = conn.execute(update(m.Client).where(m.Client.id == "cB").values(name="x"))
            assert gone.rowcount == 0
            gone = conn.execute(delete(m.Diagnosis).where(m.Diagnosis.client_id == "cB"))
            assert gone.rowcount == 0
            gone = conn.execute(delete(m.SessionRow).where(m.SessionRow.id == "sB"))
            assert gone.rowcount == 0
            # Its own practice's rows it may change.
            mine = conn.execute(update(m.Client).where(m.Client.id == "cA").values(name="A2"))
            assert mine.rowcount == 1
        for row in (_client("cB2", "B"), _client("cX", "A") | {"account_id": "B"}):
            with staff.begin() as conn, pytest.raises(ProgrammingError, match="row-level security"):
                in_practice(conn, "A")
                conn.execute(insert(m.Client).values(**row))
        # Moving its own row into practice B is refused too.
        with staff.begin() as conn, pytest.raises(ProgrammingError, match="row-level security"):
            in_practice(conn, "A")
            conn.execute(update(m.Client).where(m.Client.id == "cA").values(account_id="B"))
        # Setting a practice the login is not mapped to shows nothing.
        with staff.begin() as conn:
            in_practice(conn, "B")
            assert _count(conn, m.Client.__table__) == 0
            assert _count(conn, m.Account.__table__) == 0
    finally:
        staff.dispose()


def test_with_no_practice_set_staff_see_nothing(databases) -> None:
    _, staff_url, _ = databases
    staff = create_engine(staff_url)
    try:
        with staff.connect() as conn:
            for table in (m.Account, m.Client, m.SessionRow, m.Diagnosis):
                assert _count(conn, table.__table__) == 0, table.__tablename__
    finally:
        staff.dispose()


def test_a_pooled_connection_reused_after_practice_a_does_not_keep_it(databases) -> None:
    _, staff_url, _ = databases
    staff = create_engine(staff_url, pool_size=1, max_overflow=0)
    try:
        with staff.begin() as conn:
            in_practice(conn, "A")
            first = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
            assert _count(conn, m.Client.__table__) == 1
        with staff.begin() as conn:  # the same server session, back from the pool
            assert conn.execute(text("SELECT pg_backend_pid()")).scalar_one() == first
            assert _count(conn, m.Client.__table__) == 0
            assert conn.execute(
                text("SELECT current_setting('app.account_id', true)")
            ).scalar() in (None, "")
    finally:
        staff.dispose()


def test_the_service_role_works_across_practices_or_in_the_one_it_sets(databases) -> None:
    service_url, _, _ = databases
    service = create_engine(service_url)
    try:
        with service.begin() as conn:
            assert conn.execute(select(m.Client.id).order_by(m.Client.id)).scalars().all() == [
                "cA",
                "cB",
            ]
        with service.begin() as conn:
            in_practice(conn, "B")
            assert conn.execute(select(m.SessionRow.id)).scalars().all() == ["sB"]
            with pytest.raises(ProgrammingError, match="row-level security"):
                conn.execute(insert(m.Client).values(**_client("cA9", "A")))
    finally:
        service.dispose()


def test_every_practice_table_is_forced_under_rls_and_no_application_role_owns_or_bypasses(
    databases,
) -> None:
    _, _, admin = databases
    with admin.connect() as conn:
        tables = conn.execute(
            text(
                "SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity, r.rolname "
                "FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner "
                "WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p')"
            )
        ).all()
        roles = conn.execute(
            text(
                "SELECT rolname, rolsuper, rolbypassrls FROM pg_roles WHERE rolname = ANY(:names)"
            ),
            {"names": list(APPLICATION_ROLES)},
        ).all()
        policies = {
            row.tablename for row in conn.execute(text("SELECT tablename FROM pg_policies"))
        }
    practice_tables = {t.relname for t in tables} - NOT_PRACTICE_TABLES
    # Every table of the models is in the database, and every practice table is covered.
    assert set(m.Base.metadata.tables) - NOT_PRACTICE_TABLES == practice_tables
    unprotected = [
        t.relname
        for t in tables
        if t.relname in practice_tables and not (t.relrowsecurity and t.relforcerowsecurity)
    ]
    assert unprotected == []
    assert practice_tables <= policies
    owners = {t.rolname for t in tables}
    assert owners.isdisjoint(APPLICATION_ROLES), owners
    assert {r.rolname for r in roles} == set(APPLICATION_ROLES)
    assert [r.rolname for r in roles if r.rolsuper or r.rolbypassrls] == []


def test_the_application_roles_may_not_update_or_delete_the_audit_log(databases) -> None:
    service_url, staff_url, _ = databases
    service = create_engine(service_url)
    staff = create_engine(staff_url)
    try:
        from billing_pipeline.db import audit

        audit.record(service, "explain", ["cA"], "shown", account_id="A")
        for statement in (
            update(m.AuditLog).values(outcome="nothing to see"),
            delete(m.AuditLog),
            text("TRUNCATE audit_log"),
        ):
            with (
                service.begin() as conn,
                pytest.raises(ProgrammingError, match="permission denied"),
            ):
                conn.execute(statement)
        with staff.begin() as conn, pytest.raises(ProgrammingError, match="permission denied"):
            conn.execute(select(m.AuditLog.id))
    finally:
        service.dispose()
        staff.dispose()


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_the_pipelines_postgresql_test_databases_log_in_as_the_service_role(
    database_url: str,
) -> None:
    """Every PostgreSQL test of the pipeline (the nightly chain, the contract scenarios,
    backfills, crashes) runs on a URL like this one: the service role, not the owner."""
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            who = conn.execute(
                text(
                    "SELECT current_user, r.rolsuper, r.rolbypassrls FROM pg_roles r "
                    "WHERE r.rolname = current_user"
                )
            ).one()
        assert tuple(who) == (SERVICE_ROLE, False, False)
    finally:
        engine.dispose()


def test_the_service_role_may_not_migrate_and_says_who_must(databases) -> None:
    service_url, _, admin = databases
    command.downgrade(alembic_config(admin), "0004")
    service = make_engine(service_url)
    try:
        with pytest.raises(NotAllowedToMigrate) as refused:
            upgrade(service)
        assert str(refused.value) == (
            f"the billing database is at revision 0004, the code needs {head_revision()}, and "
            f"{SERVICE_ROLE} may not change the schema: run `billing-pipeline db upgrade` with "
            "the owner's URL"
        )
        assert current_revision(service) == "0004"
    finally:
        service.dispose()
    assert upgrade(admin) is True  # the owner (here the superuser) may
