"""Rendered documents stored content-addressed; the notification email's state on each delivery

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30 00:10:00
"""

import sqlalchemy as sa
from alembic import op

import billing_pipeline.db.types
from billing_pipeline.db.migrations.tables_v1 import create_documents_v1

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # `documents` held nothing before this revision (nothing rendered): it is made anew, keyed
    # by content rather than one row per document.
    op.drop_table("documents")
    op.create_table(
        "document_files",
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=False),
        sa.Column("byte_size", sa.Integer(), nullable=False),
        sa.Column("created_at", billing_pipeline.db.types.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("sha256", name=op.f("pk_document_files")),
    )
    op.create_table(
        "documents",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("document_type", sa.String(length=16), nullable=False),
        sa.Column("document_id", sa.Integer(), nullable=False),
        sa.Column("content_key", sa.String(length=64), nullable=False),
        sa.Column("content_sha256", sa.String(length=64), nullable=False),
        sa.Column("byte_size", sa.Integer(), nullable=False),
        sa.Column("missing_fields", sa.String(length=400), server_default="", nullable=False),
        sa.Column("rendered_at", billing_pipeline.db.types.UTCDateTime(), nullable=False),
        sa.CheckConstraint(
            "document_type IN ('bill','superbill','statement')", name=op.f("ck_documents_type")
        ),
        sa.ForeignKeyConstraint(
            ["content_sha256"],
            ["document_files.sha256"],
            name=op.f("fk_documents_content_sha256_document_files"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_documents")),
        sa.UniqueConstraint(
            "document_type",
            "document_id",
            "content_key",
            name=op.f("uq_documents_document_type"),
        ),
    )
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("email_status", sa.String(length=16), nullable=True))
        batch_op.add_column(
            sa.Column("email_attempts", sa.Integer(), server_default="0", nullable=False)
        )
        batch_op.add_column(
            sa.Column(
                "email_next_attempt_at", billing_pipeline.db.types.UTCDateTime(), nullable=True
            )
        )
        batch_op.add_column(sa.Column("email_last_error", sa.String(length=200), nullable=True))
        batch_op.add_column(
            sa.Column("email_sent_at", billing_pipeline.db.types.UTCDateTime(), nullable=True)
        )
        batch_op.create_check_constraint(
            "email_status", "email_status IN ('pending','sent','failed','no_address')"
        )
    with op.batch_alter_table("portal_shares", schema=None) as batch_op:
        batch_op.add_column(sa.Column("content_sha256", sa.String(length=64), nullable=True))
        batch_op.create_foreign_key(
            "fk_portal_shares_content_sha256_document_files",
            "document_files",
            ["content_sha256"],
            ["sha256"],
        )


def downgrade() -> None:
    with op.batch_alter_table("portal_shares", schema=None) as batch_op:
        batch_op.drop_constraint(
            "fk_portal_shares_content_sha256_document_files", type_="foreignkey"
        )
        batch_op.drop_column("content_sha256")
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_constraint("email_status", type_="check")
        batch_op.drop_column("email_sent_at")
        batch_op.drop_column("email_last_error")
        batch_op.drop_column("email_next_attempt_at")
        batch_op.drop_column("email_attempts")
        batch_op.drop_column("email_status")
    op.drop_table("documents")
    op.drop_table("document_files")
    create_documents_v1()
