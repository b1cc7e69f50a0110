"""`supportloop db backup`: a consistent copy of the feedback store taken while servers keep writing.

- SQLite: the online backup API (`sqlite3.Connection.backup`), page by page into a new file; the copy is
  a snapshot of one moment (writers are not stopped; a write during the copy restarts it), checked with
  `PRAGMA integrity_check`. Restore: stop the servers and put the copy in place of the database file.
- PostgreSQL: `pg_dump --format=custom` (one transaction: a consistent snapshot; the PostgreSQL client of
  the server's major version must be installed). Restore: `pg_restore --clean --if-exists -d URL FILE`.

The copy is written next to its final name and renamed into place once whole, so a backup that fails
never leaves a file that looks like one.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.engine import URL, make_url


class BackupError(RuntimeError):
    """The backup could not be made; the message says why."""


@dataclass(frozen=True)
class Backup:
    path: Path
    kind: str  # "sqlite" or "postgresql"
    bytes: int

    def describe(self) -> str:
        restore = (
            "restore: stop the servers, then put this file in place of the database file"
            if self.kind == "sqlite"
            else f"restore: pg_restore --clean --if-exists -d DATABASE_URL {self.path}"
        )
        return f"{self.kind} store backed up to {self.path} ({self.bytes:,} bytes); {restore}"


def default_name(url: str, now: datetime | None = None) -> Path:
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%d-%H%M%S")
    return Path(f"supportloop-{stamp}.{'sqlite3' if _kind(url) == 'sqlite' else 'pgdump'}")


def backup(url: str, out: Path) -> Backup:
    """Copy the store at `url` into `out` (which must not exist yet)."""
    out = Path(out)
    if out.exists():
        raise BackupError(f"{out} exists already: choose another name (a backup never overwrites a file)")
    if not out.parent.is_dir():
        raise BackupError(f"{out.parent} is not a folder")
    partial = out.with_name(f".{out.name}.partial")
    partial.unlink(missing_ok=True)
    kind = _kind(url)
    try:
        _backup_sqlite(make_url(url), partial) if kind == "sqlite" else _pg_dump(make_url(url), partial)
        partial.rename(out)
    finally:
        partial.unlink(missing_ok=True)
    return Backup(out, kind, out.stat().st_size)


def _kind(url: str) -> str:
    backend = make_url(url).get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise BackupError(f"cannot back up a {backend} store: supportloop stores are SQLite or PostgreSQL")
    return backend


def _backup_sqlite(url: URL, target: Path) -> None:
    source_path = Path(url.database or "")
    if not url.database or not source_path.is_file():
        raise BackupError(f"no SQLite database at {source_path or '(in memory)'}")
    source = sqlite3.connect(f"file:{source_path}?mode=ro", uri=True)
    copy = sqlite3.connect(target)
    try:
        source.backup(copy)
        verdict = copy.execute("PRAGMA integrity_check").fetchone()[0]
    except sqlite3.Error as exc:
        raise BackupError(f"the SQLite backup of {source_path} failed: {exc}") from exc
    finally:
        copy.close()
        source.close()
    if verdict != "ok":
        raise BackupError(f"the copy of {source_path} fails its integrity check: {verdict}")


def _pg_dump(url: URL, target: Path) -> None:
    """`pg_dump` with the URL's parts as libpq variables: the password stays out of the command line
    (which other users of the machine can read)."""
    if shutil.which("pg_dump") is None:
        raise BackupError("pg_dump is not installed: install the PostgreSQL client of the server's major version")
    parts = {"PGHOST": url.host, "PGPORT": url.port, "PGUSER": url.username, "PGPASSWORD": url.password}
    env = {**os.environ, **{k: str(v) for k, v in parts.items() if v is not None}}
    command = ["pg_dump", "--format=custom", "--no-owner", f"--file={target}", "--dbname", url.database or ""]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BackupError(f"pg_dump failed: {done.stderr.strip() or f'exit code {done.returncode}'}")
