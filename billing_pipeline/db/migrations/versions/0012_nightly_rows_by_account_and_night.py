"""Index a night's rows by (account_id, night)

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-30 13:10:00

The nightly steps read `eligible_sessions` and `resolved_settings` by practice and night
(`account_id IN (...) AND night = ...`). With an index on account_id alone beside the primary
key (night first), PostgreSQL ANDed the two, and for a night just written (its statistics not
yet analysed, so the night looked rare) scanned the whole night's primary-key entries once per
practice: at the bench's `ehr` size (207,484 rows a night) 10.7 ms per listing of 10
practices, 0.7 ms with this index. The composite index replaces the one on account_id (its
leading column serves those lookups and the foreign key).
"""

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

TABLES = ("eligible_sessions", "resolved_settings")


def upgrade() -> None:
    for table in TABLES:
        op.create_index(f"ix_{table}_account_id_night", table, ["account_id", "night"])
        op.drop_index(f"ix_{table}_account_id", table_name=table)


def downgrade() -> None:
    for table in TABLES:
        op.create_index(f"ix_{table}_account_id", table, ["account_id"])
        op.drop_index(f"ix_{table}_account_id_night", table_name=table)
