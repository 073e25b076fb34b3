"""Settings, cards and services that change over time: effective-dated history
(setting_changes) and the card fingerprint that tells a replaced card from the same one

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30 00:00:00
"""

import sqlalchemy as sa
from alembic import op

import billing_pipeline.db.types

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "setting_changes",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("account_id", sa.String(length=64), nullable=False),
        sa.Column("subject", sa.String(length=16), nullable=False),
        sa.Column("subject_id", sa.String(length=64), nullable=False),
        sa.Column("field", sa.String(length=32), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("effective_at", billing_pipeline.db.types.UTCDateTime(), nullable=False),
        sa.Column("recorded_at", billing_pipeline.db.types.UTCDateTime(), nullable=False),
        sa.CheckConstraint(
            "subject IN ('account','client','billing_contact','session')",
            name=op.f("ck_setting_changes_subject"),
        ),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
            name=op.f("fk_setting_changes_account_id_accounts"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_setting_changes")),
        sa.UniqueConstraint(
            "subject",
            "subject_id",
            "field",
            "effective_at",
            name=op.f("uq_setting_changes_subject"),
        ),
    )
    op.create_index(
        op.f("ix_setting_changes_account_id"), "setting_changes", ["account_id"], unique=False
    )
    op.create_index(
        "ix_setting_changes_subject",
        "setting_changes",
        ["subject", "subject_id", "effective_at"],
        unique=False,
    )
    with op.batch_alter_table("payment_methods", schema=None) as batch_op:
        batch_op.add_column(sa.Column("fingerprint", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("payment_methods", schema=None) as batch_op:
        batch_op.drop_column("fingerprint")
    op.drop_index("ix_setting_changes_subject", table_name="setting_changes")
    op.drop_index(op.f("ix_setting_changes_account_id"), table_name="setting_changes")
    op.drop_table("setting_changes")
