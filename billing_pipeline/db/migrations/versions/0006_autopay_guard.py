"""The AutoPay anomaly guard: per-account thresholds and the nights it held (who released them
and when); the practices' evening summaries (staff address and hour, one per night)

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 01:00:00
"""

import sqlalchemy as sa
from alembic import op

import billing_pipeline.db.types

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def _account_id() -> sa.Column[str]:
    """Each table's practice: an account id (models.ID)."""
    return sa.Column("account_id", sa.String(length=64), nullable=False)


def upgrade() -> None:
    op.create_table(
        "autopay_guard_settings",
        _account_id(),
        sa.Column("multiple_percent", sa.Integer(), nullable=False),
        sa.Column("min_nights", sa.Integer(), nullable=False),
        sa.Column("window_nights", sa.Integer(), nullable=False),
        sa.Column("min_extra_charges", sa.Integer(), nullable=False),
        sa.Column("min_extra_cents", sa.Integer(), nullable=False),
        sa.Column("client_cap_cents", sa.Integer(), nullable=False),
        sa.Column("changed_at", billing_pipeline.db.types.UTCDateTime(), nullable=False),
        sa.Column("changed_by", sa.String(length=120), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
            name=op.f("fk_autopay_guard_settings_account_id_accounts"),
        ),
        sa.PrimaryKeyConstraint("account_id", name=op.f("pk_autopay_guard_settings")),
    )
    op.create_table(
        "autopay_holds",
        _account_id(),
        sa.Column("night", sa.Date(), nullable=False),
        sa.Column("held_at", billing_pipeline.db.types.UTCDateTime(), nullable=False),
        sa.Column("reasons", sa.String(length=200), nullable=False),
        sa.Column("details", sa.Text(), nullable=False),
        sa.Column("released_at", billing_pipeline.db.types.UTCDateTime(), nullable=True),
        sa.Column("released_by", sa.String(length=120), nullable=True),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_autopay_holds_account_id_accounts")
        ),
        sa.PrimaryKeyConstraint("account_id", "night", name=op.f("pk_autopay_holds")),
    )

    op.create_table(
        "summary_recipients",
        _account_id(),
        sa.Column("staff_email", sa.String(length=320), nullable=False),
        sa.Column("summary_hour", sa.Integer(), nullable=False),
        sa.Column("changed_at", billing_pipeline.db.types.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_summary_recipients_account_id_accounts")
        ),
        sa.PrimaryKeyConstraint("account_id", name=op.f("pk_summary_recipients")),
    )
    op.create_table(
        "evening_summaries",
        _account_id(),
        sa.Column("night", sa.Date(), nullable=False),
        sa.Column("claimed_at", billing_pipeline.db.types.UTCDateTime(), nullable=False),
        sa.Column("sent_at", billing_pipeline.db.types.UTCDateTime(), nullable=True),
        sa.Column("message_id", sa.String(length=200), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
            name=op.f("fk_evening_summaries_account_id_accounts"),
        ),
        sa.PrimaryKeyConstraint("account_id", "night", name=op.f("pk_evening_summaries")),
    )


def downgrade() -> None:
    op.drop_table("evening_summaries")
    op.drop_table("summary_recipients")
    op.drop_table("autopay_holds")
    op.drop_table("autopay_guard_settings")
