"""Finance's figures per practice and night (`finance_daily`), and the alerts of failed runs
(`run_alerts`)

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30 03:00:00

`finance_daily` holds a practice's rows: on PostgreSQL it is isolated like every practice table
of 0007 (row-level security enabled and forced, the staff and service policies on
`account_id`, owned by the owner role). `run_alerts` names jobs, runs, partitions and practice
ids (no client data, several practices per row): like `audit_log`, it is not under RLS and
staff have no access to it.
"""

import sqlalchemy as sa
from alembic import op

import billing_pipeline.db.types

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

OWNER = "billing_pipeline_owner"
SERVICE = "billing_pipeline_service"
STAFF = "billing_pipeline_staff"


def upgrade() -> None:
    op.create_table(
        "finance_daily",
        sa.Column("account_id", sa.String(length=64), nullable=False),
        sa.Column("night", sa.Date(), nullable=False),
        sa.Column("bills", sa.Integer(), nullable=False),
        sa.Column("bills_cents", sa.BigInteger(), nullable=False),
        sa.Column("collected_cents", sa.BigInteger(), nullable=False),
        sa.Column("charges_succeeded", sa.Integer(), nullable=False),
        sa.Column("charges_declined", sa.Integer(), nullable=False),
        sa.Column("declined_cents", sa.BigInteger(), nullable=False),
        sa.Column("charges_requires_action", sa.Integer(), nullable=False),
        sa.Column("open_balance_cents", sa.BigInteger(), nullable=False),
        sa.Column("documents_shared", sa.Integer(), nullable=False),
        sa.Column("computed_at", billing_pipeline.db.types.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_finance_daily_account_id_accounts")
        ),
        sa.PrimaryKeyConstraint("account_id", "night", name=op.f("pk_finance_daily")),
    )
    op.create_index(op.f("ix_finance_daily_night"), "finance_daily", ["night"])
    op.create_table(
        "run_alerts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("at", billing_pipeline.db.types.UTCDateTime(), nullable=False),
        sa.Column("run_id", sa.String(length=64), nullable=False),
        sa.Column("job_name", sa.String(length=200), nullable=False),
        sa.Column("partitions", sa.String(length=100), nullable=False),
        sa.Column("account_ids", sa.Text(), nullable=False),
        sa.Column("failed_steps", sa.Text(), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("email_status", sa.String(length=16), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_run_alerts")),
        sa.UniqueConstraint("run_id", name=op.f("uq_run_alerts_run_id")),
    )
    if op.get_bind().dialect.name != "postgresql":
        return
    staff = "account_id = billing_practice_for_staff()"
    service = "billing_practice() IS NULL OR (account_id = billing_practice())"
    op.execute("ALTER TABLE finance_daily ENABLE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE finance_daily FORCE ROW LEVEL SECURITY")
    op.execute(
        f"CREATE POLICY staff_own_practice ON finance_daily TO {STAFF} "
        f"USING ({staff}) WITH CHECK ({staff})"
    )
    op.execute(
        f"CREATE POLICY service_all_or_set_practice ON finance_daily TO {SERVICE} "
        f"USING ({service}) WITH CHECK ({service})"
    )
    op.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON finance_daily TO {SERVICE}, {STAFF}")
    op.execute(f"REVOKE ALL ON run_alerts FROM {STAFF}")
    op.execute(f"GRANT SELECT, INSERT, UPDATE ON run_alerts TO {SERVICE}")
    op.execute(f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {SERVICE}")
    op.execute(
        f"""
DO $$ BEGIN
  IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
    ALTER TABLE finance_daily OWNER TO {OWNER};
    ALTER TABLE run_alerts OWNER TO {OWNER};
  END IF;
END $$;"""
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP POLICY IF EXISTS staff_own_practice ON finance_daily")
        op.execute("DROP POLICY IF EXISTS service_all_or_set_practice ON finance_daily")
    op.drop_table("run_alerts")
    op.drop_index(op.f("ix_finance_daily_night"), table_name="finance_daily")
    op.drop_table("finance_daily")
