"""AutoPay claims with an owner and a lease; bills shared again once their AutoPay outcome is
known

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 16:40:00
"""

import sqlalchemy as sa
from alembic import op

import billing_pipeline.db.types

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("autopay_attempts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("owner", sa.String(length=160), nullable=True))
        batch_op.add_column(
            sa.Column("lease_expires_at", billing_pipeline.db.types.UTCDateTime(), nullable=True)
        )
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "shared_before_outcome",
                sa.Boolean(),
                nullable=False,
                server_default=sa.false(),
            )
        )
        batch_op.add_column(
            sa.Column("reshare_due_at", billing_pipeline.db.types.UTCDateTime(), nullable=True)
        )
        batch_op.add_column(
            sa.Column("reshared_at", billing_pipeline.db.types.UTCDateTime(), nullable=True)
        )
    with op.batch_alter_table("portal_shares", schema=None) as batch_op:
        batch_op.add_column(sa.Column("revision", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("bill_status", sa.String(length=8), nullable=True))
        batch_op.drop_constraint("uq_portal_shares_delivery_id", type_="unique")
        batch_op.create_unique_constraint(
            "uq_portal_shares_delivery_id", ["delivery_id", "revision"]
        )


def downgrade() -> None:
    with op.batch_alter_table("portal_shares", schema=None) as batch_op:
        batch_op.drop_constraint("uq_portal_shares_delivery_id", type_="unique")
        batch_op.create_unique_constraint("uq_portal_shares_delivery_id", ["delivery_id"])
        batch_op.drop_column("bill_status")
        batch_op.drop_column("revision")
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_column("reshared_at")
        batch_op.drop_column("reshare_due_at")
        batch_op.drop_column("shared_before_outcome")
    with op.batch_alter_table("autopay_attempts", schema=None) as batch_op:
        batch_op.drop_column("lease_expires_at")
        batch_op.drop_column("owner")
