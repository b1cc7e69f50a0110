"""Customer isolation: each conversation keeps the SHA-256 digest of a secret given to its customer once;
reading the transcript, voting, asking for a person and resuming the session need the secret.
Conversations made before have none: no customer can reach them any more (their widget starts anew).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("conversation", sa.Column("token_hash", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("conversation") as batch:
        batch.drop_column("token_hash")
