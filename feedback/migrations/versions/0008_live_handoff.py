"""Live human handoff: agent messages (role `agent`, with their author), handoff requests taken by an
agent and handed back or closed (with the email a customer may leave when nobody is available), and corrections drafted from an agent's live reply (`origin`).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

AutoString, UTCDateTime = sqlmodel.sql.sqltypes.AutoString, sqlmodel.sql.sqltypes.UTCDateTime
ROLES, ROLES_BEFORE = ("user", "assistant", "agent"), ("user", "assistant")
STATUSES, STATUSES_BEFORE = ("open", "taken", "closed"), ("open", "closed")
outcome_enum = sa.Enum("handed_back", "closed", name="handoffoutcome")
STAFF_FK, ASSIGNED_FK = "fk_message_staff_id_staff", "fk_handoff_assigned_to_staff"


def _postgres() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def upgrade() -> None:
    if _postgres():  # new values of native enum types (usable once this transaction commits)
        op.execute("ALTER TYPE role ADD VALUE IF NOT EXISTS 'agent'")
        op.execute("ALTER TYPE handoffstatus ADD VALUE IF NOT EXISTS 'taken' BEFORE 'closed'")
        outcome_enum.create(op.get_bind(), checkfirst=True)
    # Plain ADD COLUMN (SQLite rebuilds a table for anything more, which its foreign keys refuse while
    # rows refer to it). On SQLite the enums are plain strings: the new values need no change.
    _add_staff_reference("message", "staff_id", STAFF_FK)
    _add_staff_reference("handoff", "assigned_to", ASSIGNED_FK)
    op.add_column("handoff", sa.Column("assigned_at", UTCDateTime(), nullable=True))
    op.add_column("handoff", sa.Column("outcome", outcome_enum, nullable=True))
    op.add_column("handoff", sa.Column("contact_email", AutoString(length=254), nullable=True))
    op.add_column("correction", sa.Column("origin", AutoString(length=16), nullable=False, server_default="staff"))


def _add_staff_reference(table: str, column: str, name: str) -> None:
    if _postgres():
        op.add_column(table, sa.Column(column, sa.Integer(), nullable=True))
        op.create_foreign_key(name, table, "staff", [column], ["id"])
    else:  # SQLite: a column-level REFERENCES, which ADD COLUMN allows
        op.execute(f"ALTER TABLE {table} ADD COLUMN {column} INTEGER REFERENCES staff (id)")


def downgrade() -> None:
    op.execute("DELETE FROM message WHERE role = 'agent'")
    op.execute("UPDATE handoff SET status = 'open' WHERE status = 'taken'")
    with op.batch_alter_table("correction") as batch:
        batch.drop_column("origin")
    with op.batch_alter_table("handoff") as batch:
        if _postgres():
            batch.drop_constraint(ASSIGNED_FK, type_="foreignkey")
        batch.drop_column("contact_email")
        batch.drop_column("outcome")
        batch.drop_column("assigned_at")
        batch.drop_column("assigned_to")
    with op.batch_alter_table("message") as batch:
        if _postgres():
            batch.drop_constraint(STAFF_FK, type_="foreignkey")
        batch.drop_column("staff_id")
    if _postgres():  # PostgreSQL cannot drop an enum value: rebuild the types without them
        _shrink_enum("message", "role", "role", ROLES_BEFORE)
        _shrink_enum("handoff", "status", "handoffstatus", STATUSES_BEFORE)
        outcome_enum.drop(op.get_bind(), checkfirst=True)


def _shrink_enum(table: str, column: str, name: str, values: tuple[str, ...]) -> None:
    op.execute(f"ALTER TYPE {name} RENAME TO {name}_old")
    sa.Enum(*values, name=name).create(op.get_bind())
    op.execute(f"ALTER TABLE {table} ALTER COLUMN {column} TYPE {name} USING {column}::text::{name}")
    op.execute(f"DROP TYPE {name}_old")
