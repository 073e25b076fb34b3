"""Index payment_methods and billing_contacts by practice

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30 06:15:00

Every nightly step reads a batch of practices' cards and billing contacts by `account_id`
(`store.load_practices`); without an index each read scanned the whole table (2.4 s of a
night's `bills` at the bench's `ehr` size, 180 scans of 100,000 cards).
"""

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

INDEXES = (
    ("ix_payment_methods_account_id", "payment_methods"),
    ("ix_billing_contacts_account_id", "billing_contacts"),
)


def upgrade() -> None:
    for name, table in INDEXES:
        op.create_index(name, table, ["account_id"], unique=False)


def downgrade() -> None:
    for name, table in INDEXES:
        op.drop_index(name, table_name=table)
