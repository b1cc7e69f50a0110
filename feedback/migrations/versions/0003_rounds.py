"""Training rounds: the snapshot time and progress of a run, and the store lock that keeps rounds from
overlapping across processes.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""
from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

AutoString, UTCDateTime = sqlmodel.sql.sqltypes.AutoString, sqlmodel.sql.sqltypes.UTCDateTime


def upgrade() -> None:
    with op.batch_alter_table("trainingrun") as batch:
        batch.add_column(sa.Column("snapshot_at", UTCDateTime(), nullable=True))
        batch.add_column(sa.Column("progress_json", AutoString(), nullable=False, server_default="{}"))
    op.create_table(
        "trainlock",
        sa.Column("name", AutoString(length=32), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("host", AutoString(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("acquired_at", UTCDateTime(), nullable=False),
        sa.Column("heartbeat_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )


def downgrade() -> None:
    op.drop_table("trainlock")
    with op.batch_alter_table("trainingrun") as batch:
        batch.drop_column("progress_json")
        batch.drop_column("snapshot_at")
