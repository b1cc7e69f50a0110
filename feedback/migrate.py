"""Schema migrations with Alembic, run programmatically (no alembic.ini): at server start-up, before
a training round, and by `supportloop db upgrade`.

A database made by supportloop 0.1 (tables created without migrations) is recognised and stamped at
the baseline revision first, then upgraded. On PostgreSQL an advisory lock makes replicas that start
together apply the migrations once.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, Engine

BASELINE = "0001"  # the schema supportloop 0.1 created with `create_all`
_LOCK_ID = 0x5_0_7_7_0_1  # PostgreSQL advisory lock key for migrations


def _config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    config.attributes["connection"] = connection
    return config


def head() -> str | None:
    """The newest revision (None only when there are no migrations)."""
    return ScriptDirectory.from_config(_config()).get_current_head()


def current(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> str | None:
    """Bring the schema to `revision` (the newest by default); returns the revision reached."""
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_ID})
        config = _config(connection)
        if _legacy(connection):
            command.stamp(config, BASELINE)
        command.upgrade(config, revision)
    return current(engine)


def downgrade(engine: Engine, revision: str) -> str | None:
    with engine.begin() as connection:
        command.downgrade(_config(connection), revision)
    return current(engine)


def _legacy(connection: Connection) -> bool:
    """Tables of supportloop 0.1 but no migration history."""
    tables = set(inspect(connection).get_table_names())
    return "conversation" in tables and "alembic_version" not in tables
