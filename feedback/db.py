"""Engine creation from a URL and schema set-up.

SQLite gets WAL and foreign keys on every connection; any SQLAlchemy URL works (PostgreSQL at scale).
The schema is made and kept current by the Alembic migrations in `feedback.migrate`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.engine.interfaces import DBAPIConnection, DBAPICursor
from sqlalchemy.pool import ConnectionPoolEntry
from sqlmodel import Session, create_engine

from feedback import models  # noqa: F401  (registers the tables on SQLModel.metadata)

log = logging.getLogger(__name__)


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


BUSY_SECONDS = 5.0  # how long a SQLite connection waits for another's lock


def _sqlite_pragmas(dbapi_connection: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout={int(BUSY_SECONDS * 1000)}")
    cursor.execute("PRAGMA foreign_keys=ON")
    _wal(cursor)
    cursor.close()


def _wal(cursor: DBAPICursor) -> None:
    """Switch the file to WAL (persistent: a no-op once done). On a new file, processes that open it at the
    same instant (a server and a round, replicas) all try; SQLite answers all but one "database is locked"
    at once, without waiting (its busy handler is not used for this switch), so try again for a while."""
    import sqlite3

    deadline = time.monotonic() + BUSY_SECONDS
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def make_engine(url: str) -> Engine:
    """An engine for `url`; SQLite files get their parent folder created."""
    if url.startswith("sqlite"):
        db_path = url.split("///", 1)[-1]
        if db_path and db_path != ":memory:":
            Path(db_path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True)


class Store:
    """Owns the engine; hands out sessions. The one object the bot and the trainer share."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)

    def migrate(self) -> str | None:
        """Apply pending migrations; returns the schema revision."""
        from feedback.migrate import upgrade

        return upgrade(self.engine)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as session:
            yield session

    def dispose(self) -> None:
        self.engine.dispose()


def open_store(url: str) -> Store:
    """A store whose schema is migrated to the newest revision."""
    store = Store(url)
    store.migrate()
    return store


async def notifications(url: str, channel: str, what: str, retry_seconds: float = 5.0) -> AsyncIterator[str | None]:
    """PostgreSQL NOTIFY payloads on `channel` of the store at `url`, for ever: `None` each time listening
    starts (notifications sent while not listening are lost: catch up then), then each payload. After a
    lost connection it logs that `what` is lost and reconnects. Close it with `contextlib.aclosing`."""
    import psycopg

    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    while True:
        try:
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                await conn.execute(f"LISTEN {channel}")
                yield None
                async for note in conn.notifies():
                    yield note.payload
        except (psycopg.Error, OSError) as exc:
            log.warning("%s lost (%s); reconnecting", what, exc)
            await asyncio.sleep(retry_seconds)
