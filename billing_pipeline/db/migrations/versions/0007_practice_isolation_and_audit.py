"""Practices isolated by row-level security (PostgreSQL); the append-only, hash-chained audit log

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30 01:00:00

PostgreSQL only (SQLite has no roles and no row-level security; there the two new tables are all
this revision makes):

- three roles, made if missing (roles are cluster-wide): `billing_pipeline_owner` (NOLOGIN) owns
  the tables; `billing_pipeline_service` (LOGIN, no password set here) is the nightly pipeline and
  the CLI; `billing_pipeline_staff` (NOLOGIN) is the group of practice staff logins, each mapped
  to its practices in `practice_staff`. None is superuser or bypasses RLS; no application role
  owns a table, so FORCE makes the policies apply to everyone but the owner and superusers.
- every table holding a practice's rows gets RLS enabled and forced and two policies:
  * staff: the row's practice is `billing_practice_for_staff()`, i.e. the practice the
    transaction set (`set_config('app.account_id', id, true)`) if this login is mapped to it,
    else none: no practice set, or a practice not theirs, sees and changes nothing;
  * service: every practice when the transaction set none (the nightly run works across
    practices: it lists accounts and loops over them), only that practice when it set one.
  Tables without `account_id` follow their parent (`client_id IN (SELECT id FROM clients)`, the
  subquery itself under the parent's policy).
- `audit_log`: INSERT and SELECT only for the application roles (no UPDATE, DELETE, TRUNCATE);
  no RLS (it holds ids, no client data, and its hash chain is global); staff have no access.
- `practice_staff` (login -> practice) is changed by the owner only; the service may read it.
"""

import sqlalchemy as sa
from alembic import op

import billing_pipeline.db.types

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

OWNER = "billing_pipeline_owner"
SERVICE = "billing_pipeline_service"
STAFF = "billing_pipeline_staff"

_CLIENTS = "client_id IN (SELECT id FROM clients)"
# table -> the rows of the practice(s) visible through its parent's policy; {p} is the practice.
PRACTICE_TABLES: dict[str, str] = {
    "accounts": "id = {p}",
    "account_sharing_defaults": "account_id = {p}",
    "payment_methods": "account_id = {p}",
    "billing_contacts": "account_id = {p}",
    "clients": "account_id = {p}",
    "setting_changes": "account_id = {p}",
    "night_steps": "account_id = {p}",
    "eligible_sessions": "account_id = {p}",
    "resolved_settings": "account_id = {p}",
    "bills": "account_id = {p}",
    "autopay_attempts": "account_id = {p}",
    "payments": "account_id = {p}",
    "superbills": "account_id = {p}",
    "statements": "account_id = {p}",
    "deliveries": "account_id = {p}",
    "check_flags": "account_id = {p}",
    # Made by migrations 0005 (level-triggered nights) and 0006 (the AutoPay anomaly guard);
    # a table not there is left out (below).
    "night_step_tries": "account_id = {p}",
    "payment_reconciliations": "account_id = {p}",
    "autopay_guard_settings": "account_id = {p}",
    "autopay_holds": "account_id = {p}",
    "summary_recipients": "account_id = {p}",
    "evening_summaries": "account_id = {p}",
    "diagnoses": _CLIENTS,
    "sessions": _CLIENTS,
    "portal_shares": _CLIENTS,
    "session_services": "session_id IN (SELECT id FROM sessions)",
    "bill_sessions": "bill_id IN (SELECT id FROM bills)",
    "bill_lines": "bill_id IN (SELECT id FROM bills)",
    "autopay_attempt_bills": "attempt_id IN (SELECT id FROM autopay_attempts)",
    "superbill_sessions": "superbill_id IN (SELECT id FROM superbills)",
    "documents": (
        "(document_type = 'bill' AND document_id IN (SELECT id FROM bills))"
        " OR (document_type = 'superbill' AND document_id IN (SELECT id FROM superbills))"
        " OR (document_type = 'statement' AND document_id IN (SELECT id FROM statements))"
    ),
    "document_files": "sha256 IN (SELECT content_sha256 FROM documents)",
}


_DEFAULT = "ALTER DEFAULT PRIVILEGES IN SCHEMA public"
_DEFAULTS = (("TABLES", "SELECT, INSERT, UPDATE, DELETE"), ("SEQUENCES", "USAGE"))


def _role(name: str, options: str) -> str:
    # Concurrent migrations (several test databases at once) may race to make the role.
    return f"""
DO $$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{name}') THEN
    CREATE ROLE {name} {options};
  END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
END $$;"""


def upgrade() -> None:
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("at", billing_pipeline.db.types.UTCDateTime(), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("account_id", sa.String(length=64), nullable=True),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("client_ids", sa.Text(), nullable=False),
        sa.Column("outcome", sa.String(length=200), nullable=False),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("row_hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
    )
    op.create_table(
        "practice_staff",
        sa.Column("db_login", sa.String(length=63), nullable=False),
        sa.Column("account_id", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_practice_staff_account_id_accounts")
        ),
        sa.PrimaryKeyConstraint("db_login", "account_id", name=op.f("pk_practice_staff")),
    )
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(_role(OWNER, "NOLOGIN NOSUPERUSER NOBYPASSRLS"))
    op.execute(_role(SERVICE, "LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE"))
    op.execute(_role(STAFF, "NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE"))
    op.execute(
        """
CREATE FUNCTION billing_practice() RETURNS text LANGUAGE sql STABLE AS
$$ SELECT nullif(current_setting('app.account_id', true), '') $$;
CREATE FUNCTION billing_practice_for_staff() RETURNS text LANGUAGE sql STABLE
SECURITY DEFINER SET search_path = public, pg_temp AS
$$ SELECT s.account_id FROM practice_staff s
   WHERE s.db_login = session_user AND s.account_id = billing_practice() $$;
REVOKE ALL ON FUNCTION billing_practice_for_staff() FROM PUBLIC;
"""
    )
    op.execute(f"GRANT EXECUTE ON FUNCTION billing_practice_for_staff() TO {STAFF}, {SERVICE}")
    op.execute(f"GRANT SELECT ON alembic_version TO {SERVICE}, {STAFF}")
    present = set(sa.inspect(op.get_bind()).get_table_names())
    for table, rows in PRACTICE_TABLES.items():
        if table not in present:
            continue
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
        staff = rows.format(p="billing_practice_for_staff()")
        service = f"billing_practice() IS NULL OR ({rows.format(p='billing_practice()')})"
        op.execute(
            f"CREATE POLICY staff_own_practice ON {table} TO {STAFF} "
            f"USING ({staff}) WITH CHECK ({staff})"
        )
        op.execute(
            f"CREATE POLICY service_all_or_set_practice ON {table} TO {SERVICE} "
            f"USING ({service}) WITH CHECK ({service})"
        )
        op.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {table} TO {SERVICE}, {STAFF}")
    op.execute(f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {SERVICE}, {STAFF}")
    # A table a later migration makes (as this login) is usable by the pipeline at once; it is
    # not under RLS until that migration says so, and staff get nothing on it until then
    # (tests/integration/test_practice_access.py lists any practice table left unprotected).
    for kind, rights in (("TABLES", "SELECT, INSERT, UPDATE, DELETE"), ("SEQUENCES", "USAGE")):
        op.execute(
            f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT {rights} ON {kind} TO {SERVICE}"
        )
    op.execute(f"REVOKE ALL ON audit_log FROM {SERVICE}, {STAFF}")
    op.execute(f"GRANT SELECT, INSERT ON audit_log TO {SERVICE}")
    # The service may read who is mapped where (logins and practice ids), never change it.
    op.execute(f"GRANT SELECT ON practice_staff TO {SERVICE}")
    op.execute(
        f"""
DO $$ DECLARE r record; BEGIN
  IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
    FOR r IN SELECT c.relname, c.relkind FROM pg_class c
             JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = 'public' AND c.relkind IN ('r', 'S')
    LOOP
      IF r.relkind = 'r' THEN
        EXECUTE format('ALTER TABLE public.%I OWNER TO {OWNER}', r.relname);
      END IF;
    END LOOP;
    ALTER FUNCTION billing_practice() OWNER TO {OWNER};
    ALTER FUNCTION billing_practice_for_staff() OWNER TO {OWNER};
  END IF;
END $$;"""
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        present = set(sa.inspect(op.get_bind()).get_table_names())
        for table in PRACTICE_TABLES.keys() & present:
            op.execute(f"DROP POLICY IF EXISTS staff_own_practice ON {table}")
            op.execute(f"DROP POLICY IF EXISTS service_all_or_set_practice ON {table}")
            op.execute(f"ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY")
            op.execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")
        for kind, rights in _DEFAULTS:
            op.execute(f"{_DEFAULT} REVOKE {rights} ON {kind} FROM {SERVICE}")
        op.execute("DROP FUNCTION IF EXISTS billing_practice_for_staff()")
        op.execute("DROP FUNCTION IF EXISTS billing_practice()")
        # The roles stay: they are the cluster's, and other databases may use them.
    op.drop_table("practice_staff")
    op.drop_table("audit_log")
