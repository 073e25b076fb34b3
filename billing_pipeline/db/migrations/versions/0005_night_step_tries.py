"""Catch-up of lost nights: the sensor's tries per practice night step; the 00:00 step is done
once its bills, superbills and statements are recorded; the payer in resolved_settings;
finance's payment_reconciliations table

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 00:20:00
"""

import sqlalchemy as sa
from alembic import op

import billing_pipeline.db.types

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "night_step_tries",
        sa.Column("account_id", sa.String(length=64), nullable=False),
        sa.Column("night", sa.Date(), nullable=False),
        sa.Column("step", sa.String(length=32), nullable=False),
        sa.Column("tries", sa.Integer(), nullable=False),
        sa.Column("last_launched_at", billing_pipeline.db.types.UTCDateTime(), nullable=False),
        sa.Column("last_run_key", sa.String(length=160), nullable=True),
        sa.Column("last_error", sa.String(length=300), nullable=True),
        sa.Column("last_failed_at", billing_pipeline.db.types.UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_night_step_tries_account_id_accounts")
        ),
        sa.PrimaryKeyConstraint("account_id", "night", "step", name=op.f("pk_night_step_tries")),
    )
    op.create_table(
        "payment_reconciliations",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("night", sa.Date(), nullable=False),
        sa.Column("account_id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=24), nullable=False),
        sa.Column("payment_intent_id", sa.String(length=255), nullable=False),
        sa.Column("attempt_id", sa.String(length=32), nullable=False),
        sa.Column("stripe_amount_cents", sa.Integer(), nullable=True),
        sa.Column("our_amount_cents", sa.Integer(), nullable=True),
        sa.Column("checked_at", billing_pipeline.db.types.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payment_reconciliations")),
    )
    op.create_index(op.f("ix_payment_reconciliations_night"), "payment_reconciliations", ["night"])
    # AutoPay charges the payer its night's resolved_settings rows name (true lineage).
    with op.batch_alter_table("resolved_settings", schema=None) as batch_op:
        batch_op.add_column(sa.Column("payer_id", sa.String(length=64), nullable=True))
    # Before this revision only `bills` recorded the 00:00 step; a night whose bills were made
    # had run its superbills and statements in the same run. Record them so that the sensor
    # does not launch those nights again (it would make nothing, but needlessly).
    for record in ("superbills", "statements"):
        op.execute(
            sa.text(
                "INSERT INTO night_steps (account_id, night, step, completed_at, run_id) "
                "SELECT account_id, night, :record, completed_at, run_id FROM night_steps "
                "WHERE step = 'bills'"
            ).bindparams(record=record)
        )


def downgrade() -> None:
    op.drop_index(op.f("ix_payment_reconciliations_night"), table_name="payment_reconciliations")
    op.drop_table("payment_reconciliations")
    with op.batch_alter_table("resolved_settings", schema=None) as batch_op:
        batch_op.drop_column("payer_id")
    op.execute(sa.text("DELETE FROM night_steps WHERE step IN ('superbills', 'statements')"))
    op.drop_table("night_step_tries")
