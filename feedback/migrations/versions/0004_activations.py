"""The history of the active adapter version (promotions, rollbacks, published rounds), for rollback
and for the record of who forced a gate-rejected version.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28
"""
from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

AutoString, UTCDateTime = sqlmodel.sql.sqltypes.AutoString, sqlmodel.sql.sqltypes.UTCDateTime


def upgrade() -> None:
    op.create_table(
        "adapteractivation",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("version", AutoString(length=128), nullable=False),
        sa.Column("previous", AutoString(length=128), nullable=False),
        sa.Column("action", AutoString(length=16), nullable=False),
        sa.Column("actor", AutoString(length=128), nullable=False),
        sa.Column("staff_id", sa.Integer(), nullable=True),
        sa.Column("forced", sa.Boolean(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["staff_id"], ["staff.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_adapteractivation_created_at", "adapteractivation", ["created_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_adapteractivation_created_at", table_name="adapteractivation")
    op.drop_table("adapteractivation")
