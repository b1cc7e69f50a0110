"""Canaries: a candidate version served to a percentage of new sessions, and how each one ended.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28
"""
from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

AutoString, UTCDateTime = sqlmodel.sql.sqltypes.AutoString, sqlmodel.sql.sqltypes.UTCDateTime


def upgrade() -> None:
    op.create_table(
        "canary",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("version", AutoString(length=128), nullable=False),
        sa.Column("percent", sa.Float(), nullable=False),
        sa.Column("actor", AutoString(length=128), nullable=False),
        sa.Column("staff_id", sa.Integer(), nullable=True),
        sa.Column("forced", sa.Boolean(), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=False),
        sa.Column("ended_at", UTCDateTime(), nullable=True),
        sa.Column("outcome", AutoString(length=32), nullable=True),
        sa.Column("ended_by", AutoString(length=128), nullable=True),
        sa.Column("detail_json", AutoString(), nullable=False),
        sa.ForeignKeyConstraint(["staff_id"], ["staff.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_canary_started_at", "canary", ["started_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_canary_started_at", table_name="canary")
    op.drop_table("canary")
