"""Grounded answers: the knowledge base (documents and their chunks with embeddings), the sources that
grounded each answer, and the retrieved passages an answer's prompt carried.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

AutoString, UTCDateTime = sqlmodel.sql.sqltypes.AutoString, sqlmodel.sql.sqltypes.UTCDateTime


def upgrade() -> None:
    op.add_column("message", sa.Column("grounding", AutoString(), nullable=True))
    op.create_table(
        "knowledgedocument",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("source", AutoString(length=128), nullable=False),
        sa.Column("path", AutoString(length=1024), nullable=False),
        sa.Column("url", AutoString(length=1024), nullable=False),
        sa.Column("title", AutoString(length=512), nullable=False),
        sa.Column("content_hash", AutoString(length=80), nullable=False),
        sa.Column("embedding_model", AutoString(length=256), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("source", "path", name="uq_knowledgedocument_source_path"),
    )
    op.create_index("ix_knowledgedocument_source", "knowledgedocument", ["source"])
    op.create_index("ix_knowledgedocument_updated_at", "knowledgedocument", ["updated_at"])
    op.create_table(
        "knowledgechunk",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("document_id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("title", AutoString(length=512), nullable=False),
        sa.Column("text", AutoString(), nullable=False),
        sa.Column("embedding", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(["document_id"], ["knowledgedocument.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_knowledgechunk_document_id", "knowledgechunk", ["document_id"])
    op.create_table(
        "groundingsource",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("message_id", AutoString(length=64), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.Column("kind", sa.Enum("kb", "correction", name="sourcekind"), nullable=False),
        sa.Column("title", AutoString(length=512), nullable=False),
        sa.Column("url", AutoString(length=1024), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("chunk_id", sa.Integer(), nullable=True),
        sa.Column("correction_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["message_id"], ["message.id"]),
        sa.ForeignKeyConstraint(["correction_id"], ["correction.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_groundingsource_message_id", "groundingsource", ["message_id"])


def downgrade() -> None:
    op.drop_index("ix_groundingsource_message_id", table_name="groundingsource")
    op.drop_table("groundingsource")
    if op.get_bind().dialect.name == "postgresql":
        sa.Enum(name="sourcekind").drop(op.get_bind(), checkfirst=True)
    op.drop_index("ix_knowledgechunk_document_id", table_name="knowledgechunk")
    op.drop_table("knowledgechunk")
    op.drop_index("ix_knowledgedocument_updated_at", table_name="knowledgedocument")
    op.drop_index("ix_knowledgedocument_source", table_name="knowledgedocument")
    op.drop_table("knowledgedocument")
    with op.batch_alter_table("message") as batch:
        batch.drop_column("grounding")
