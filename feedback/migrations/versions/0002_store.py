"""The full feedback store: feedback reasons and one vote per message, correction review and
revisions, handoff requests, the staff audit trail, per-method dataset hashes of adapters.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""
from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

REASONS = ("wrong", "unhelpful", "outdated", "unsafe", "other")
reason_enum = sa.Enum(*REASONS, name="reason")
AutoString, UTCDateTime = sqlmodel.sql.sqltypes.AutoString, sqlmodel.sql.sqltypes.UTCDateTime


def upgrade() -> None:
    _new_tables()
    with op.batch_alter_table("adapter") as batch:
        batch.add_column(sa.Column("datasets_json", AutoString(), nullable=False, server_default="{}"))
    with op.batch_alter_table("correction") as batch:
        batch.add_column(sa.Column("revision", sa.Integer(), nullable=False, server_default="1"))
        batch.add_column(sa.Column("reviewed_by", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("reviewed_at", UTCDateTime(), nullable=True))
        batch.create_index("ix_correction_updated_at", ["updated_at"], unique=False)
        batch.create_foreign_key("fk_correction_reviewed_by_staff", "staff", ["reviewed_by"], ["id"])
    _feedback()


def _new_tables() -> None:
    op.create_table(
        "staffaction",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("staff_id", sa.Integer(), nullable=False),
        sa.Column("action", AutoString(length=64), nullable=False),
        sa.Column("target", AutoString(length=128), nullable=False),
        sa.Column("detail_json", AutoString(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["staff_id"], ["staff.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_staffaction_created_at", "staffaction", ["created_at"], unique=False)
    op.create_index("ix_staffaction_staff_id", "staffaction", ["staff_id"], unique=False)
    op.create_table(
        "handoff",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("conversation_id", AutoString(length=64), nullable=False),
        sa.Column("message_id", AutoString(length=64), nullable=True),
        sa.Column("note", AutoString(length=2000), nullable=True),
        sa.Column("status", sa.Enum("open", "closed", name="handoffstatus"), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("closed_by", sa.Integer(), nullable=True),
        sa.Column("closed_at", UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(["closed_by"], ["staff.id"]),
        sa.ForeignKeyConstraint(["conversation_id"], ["conversation.id"]),
        sa.ForeignKeyConstraint(["message_id"], ["message.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_handoff_conversation_id", "handoff", ["conversation_id"], unique=False)


def _feedback() -> None:
    """Reasons become an enum (unknown old values map to 'other'); duplicate votes on a message (only
    possible under the old unconstrained schema) keep the newest; then one vote per message."""
    quoted = ", ".join(f"'{r}'" for r in REASONS)
    op.execute(f"UPDATE feedback SET reason = 'other' WHERE reason IS NOT NULL AND reason NOT IN ({quoted})")
    op.execute("DELETE FROM feedback WHERE id NOT IN (SELECT MAX(id) FROM feedback GROUP BY message_id)")
    postgres = op.get_bind().dialect.name == "postgresql"
    if postgres:
        reason_enum.create(op.get_bind(), checkfirst=True)
    with op.batch_alter_table("feedback") as batch:
        batch.add_column(sa.Column("updated_at", UTCDateTime(), nullable=True))
        batch.alter_column("reason", existing_type=sa.VARCHAR(length=32), type_=reason_enum, existing_nullable=True,
                           **({"postgresql_using": "reason::reason"} if postgres else {}))
        batch.drop_index("ix_feedback_message_id")
        batch.create_unique_constraint("uq_feedback_message_id", ["message_id"])
    op.execute("UPDATE feedback SET updated_at = created_at")
    with op.batch_alter_table("feedback") as batch:
        batch.alter_column("updated_at", existing_type=UTCDateTime(), nullable=False)
        batch.create_index("ix_feedback_updated_at", ["updated_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("feedback") as batch:
        batch.drop_index("ix_feedback_updated_at")
        batch.drop_constraint("uq_feedback_message_id", type_="unique")
        batch.create_index("ix_feedback_message_id", ["message_id"], unique=False)
        batch.alter_column("reason", existing_type=reason_enum, type_=sa.VARCHAR(length=32), existing_nullable=True)
        batch.drop_column("updated_at")
    postgres = op.get_bind().dialect.name == "postgresql"
    if postgres:
        reason_enum.drop(op.get_bind(), checkfirst=True)
    with op.batch_alter_table("correction") as batch:
        batch.drop_constraint("fk_correction_reviewed_by_staff", type_="foreignkey")
        batch.drop_index("ix_correction_updated_at")
        batch.drop_column("reviewed_at")
        batch.drop_column("reviewed_by")
        batch.drop_column("revision")
    with op.batch_alter_table("adapter") as batch:
        batch.drop_column("datasets_json")
    op.drop_index("ix_handoff_conversation_id", table_name="handoff")
    op.drop_table("handoff")
    if postgres:
        sa.Enum(name="handoffstatus").drop(op.get_bind(), checkfirst=True)
    op.drop_index("ix_staffaction_staff_id", table_name="staffaction")
    op.drop_index("ix_staffaction_created_at", table_name="staffaction")
    op.drop_table("staffaction")
