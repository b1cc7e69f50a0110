"""Staff console logins (cookie sessions with a CSRF token); handoff requests indexed by answer (the
review queue looks them up per answer).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29
"""
from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

AutoString, UTCDateTime = sqlmodel.sql.sqltypes.AutoString, sqlmodel.sql.sqltypes.UTCDateTime


def upgrade() -> None:
    op.create_table(
        "stafflogin",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("token_hash", AutoString(length=128), nullable=False),
        sa.Column("staff_id", sa.Integer(), nullable=False),
        sa.Column("csrf_token", AutoString(length=128), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["staff_id"], ["staff.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("token_hash"),
    )
    op.create_index("ix_stafflogin_staff_id", "stafflogin", ["staff_id"], unique=False)
    op.create_index("ix_stafflogin_expires_at", "stafflogin", ["expires_at"], unique=False)
    op.create_index("ix_handoff_message_id", "handoff", ["message_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_handoff_message_id", table_name="handoff")
    op.drop_index("ix_stafflogin_expires_at", table_name="stafflogin")
    op.drop_index("ix_stafflogin_staff_id", table_name="stafflogin")
    op.drop_table("stafflogin")
