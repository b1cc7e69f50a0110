"""Schema migrations with Alembic, run programmatically (no alembic.ini): at server start-up, before
a training round, and by `supportloop db upgrade`.

A database made by supportloop 0.1 (tables created without migrations) is recognised and stamped at
the baseline revision first, then upgraded. Processes that start together apply the migrations once
(PostgreSQL: an advisory lock; SQLite: the write lock).
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
        _one_at_a_time(connection)
        config = _config(connection)
        if _legacy(connection):
            command.stamp(config, BASELINE)
        command.upgrade(config, revision)
    return current(engine)


def _one_at_a_time(connection: Connection) -> None:
    """Processes that migrate one store at the same moment (replicas starting on a new version, a server
    and a training round) take turns, each seeing what the one before did: PostgreSQL's advisory lock;
    on SQLite the write lock, taken before the migration history is read (without it, all of them read
    "empty" and all but one failed with "table alembic_version already exists")."""
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_ID})
    elif connection.dialect.name == "sqlite":
        connection.exec_driver_sql("BEGIN IMMEDIATE")  # waits for the others (busy_timeout)


def downgrade(engine: Engine, revision: str) -> str | None:
    with engine.begin() as connection:
        command.downgrade(_config(connection), revision)
    return current(engine)


def _legacy(connection: Connection) -> bool:
    """Tables of supportloop 0.1 but no migration history."""
    tables = set(inspect(connection).get_table_names())
    return "conversation" in tables and "alembic_version" not in tables
