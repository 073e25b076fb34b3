"""Tables as an early revision made them, for a later revision's downgrade to make them again
(the same DDL in both places). Frozen: a later shape of a table never goes here."""

import sqlalchemy as sa
from alembic import op

import billing_pipeline.db.types


def create_documents_v1() -> None:
    """`documents` of revision 0001: one row per rendered document (0004 replaced it)."""
    op.create_table(
        "documents",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("document_type", sa.String(length=16), nullable=False),
        sa.Column("document_id", sa.Integer(), nullable=False),
        sa.Column("content_sha256", sa.String(length=64), nullable=False),
        sa.Column("byte_size", sa.Integer(), nullable=False),
        sa.Column("rendered_at", billing_pipeline.db.types.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_documents")),
        sa.UniqueConstraint(
            "document_type", "document_id", name=op.f("uq_documents_document_type")
        ),
    )
