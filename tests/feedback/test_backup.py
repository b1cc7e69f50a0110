"""Backups and upgrades (issue 22): `supportloop db backup` while a server keeps writing, on a real SQLite
file and the real local PostgreSQL (restored with pg_restore and checked); and servers that start
together on a new version migrate one store once."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from feedback import migrate, repo
from feedback.db import make_engine, open_store
from feedback.models import StaffRole
from tests.support.common import drop_postgres, postgres_url, run_cli, schema_diff

BEFORE = 40  # rows written before the backup starts


def _writer(url: str, stop: threading.Event, written: list[int]) -> None:
    """A server's writes, one transaction each, for as long as the backup runs."""
    store = open_store(url)
    try:
        while not stop.is_set():
            with store.session() as session:
                repo.create_staff(session, name=f"during-{len(written)}", role=StaffRole.agent)
            written.append(1)
    finally:
        store.dispose()


def _restored(url: str, backup: Path) -> str:
    """The backup as a database to open: the SQLite copy itself, or a new PostgreSQL database it is restored into."""
    if url.startswith("sqlite"):
        return f"sqlite:///{backup}"
    target = postgres_url()
    libpq = sa.make_url(target).set(drivername="postgresql").render_as_string(hide_password=False)
    done = subprocess.run(
        ["pg_restore", "--no-owner", f"--dbname={libpq}", str(backup)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return target


def test_a_backup_taken_while_a_server_writes_is_whole_and_has_everything_written_before(any_db_url, tmp_path):
    if not any_db_url.startswith("sqlite") and shutil.which("pg_dump") is None:
        pytest.skip("NO pg_dump: the PostgreSQL backup was not tested; install the PostgreSQL client")
    store = open_store(any_db_url)
    with store.session() as session:
        for i in range(BEFORE):
            repo.create_staff(session, name=f"before-{i}", role=StaffRole.agent)
    stop, written = threading.Event(), []
    writer = threading.Thread(target=_writer, args=(any_db_url, stop, written))
    writer.start()
    try:
        time.sleep(0.3)  # the writer is writing
        out = tmp_path / "backups" / "store.backup"
        out.parent.mkdir()
        made = run_cli("db", "backup", str(out), env={"SUPPORTLOOP_DATABASE_URL": any_db_url})
    finally:
        stop.set()
        writer.join()
    assert made.returncode == 0, made.stderr
    assert str(out) in made.stdout and "restore:" in made.stdout
    assert written, "the writer wrote nothing while the backup ran"
    assert [p.name for p in out.parent.iterdir()] == ["store.backup"]  # no partial file left beside it
    copy_url = _restored(any_db_url, out)
    engine = make_engine(copy_url)
    try:
        with engine.connect() as connection:
            names = {row[0] for row in connection.execute(sa.text("SELECT name FROM staff"))}
        assert {f"before-{i}" for i in range(BEFORE)} <= names
        assert migrate.current(engine) == migrate.head() and schema_diff(engine) == []
    finally:
        engine.dispose()
        if not any_db_url.startswith("sqlite"):
            drop_postgres(copy_url)
    if any_db_url.startswith("sqlite"):
        assert sqlite3.connect(out).execute("PRAGMA integrity_check").fetchone() == ("ok",)
    store.dispose()


def test_a_backup_never_overwrites_a_file_and_says_what_is_wrong(tmp_path):
    db = tmp_path / "store.db"
    env = {"SUPPORTLOOP_DATABASE_URL": f"sqlite:///{db}"}
    missing = run_cli("db", "backup", str(tmp_path / "a.sqlite3"), env=env)
    assert missing.returncode == 1 and f"no SQLite database at {db}" in missing.stderr
    assert not (tmp_path / "a.sqlite3").exists()
    open_store(env["SUPPORTLOOP_DATABASE_URL"]).dispose()
    taken = tmp_path / "taken.sqlite3"
    taken.write_text("something precious")
    refused = run_cli("db", "backup", str(taken), env=env)
    assert refused.returncode == 1 and "exists already" in refused.stderr and taken.read_text() == "something precious"
    nowhere = run_cli("db", "backup", str(tmp_path / "no" / "such" / "folder.sqlite3"), env=env)
    assert nowhere.returncode == 1 and "is not a folder" in nowhere.stderr
    if shutil.which("pg_dump") is None:
        pytest.skip("NO pg_dump: a failing PostgreSQL backup was not tested; install the PostgreSQL client")
    gone = sa.make_url(postgres_url())
    drop_postgres(gone.render_as_string(hide_password=False))
    failed = run_cli("db", "backup", str(tmp_path / "pg.pgdump"), env={"SUPPORTLOOP_DATABASE_URL": str(gone)})
    assert failed.returncode == 1 and "pg_dump failed" in failed.stderr and "Traceback" not in failed.stderr
    assert not (tmp_path / "pg.pgdump").exists() and not list(tmp_path.glob(".*partial"))
    default = subprocess.run([sys.executable, "-m", "bot.cli", "db", "backup"], cwd=tmp_path, capture_output=True,
                             text=True, env={**os.environ, **env})  # fmt: skip
    assert default.returncode == 0, default.stderr
    assert [p.suffix for p in tmp_path.glob("supportloop-*")] == [".sqlite3"]


MIGRATE_AT = """
import sys, time
from feedback import migrate
from feedback.db import make_engine
engine = make_engine(sys.argv[1])
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
print(migrate.upgrade(engine))
"""


@pytest.mark.parametrize("processes", [4])
def test_servers_starting_together_on_a_new_version_migrate_the_store_once(any_db_url, processes):
    """Replicas (and a training round) that start at the same moment all migrate the same empty store:
    every one succeeds and the store ends with one consistent schema at the newest revision."""
    at = time.time() + 3  # after every process has imported what it needs
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", MIGRATE_AT, any_db_url, str(at)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for _ in range(processes)
    ]
    results = [(run.wait(timeout=120), *run.communicate()) for run in runs]
    assert [(code, out.strip()) for code, out, _ in results] == [(0, migrate.head())] * processes, results
    engine = make_engine(any_db_url)
    try:
        with engine.connect() as connection:
            assert connection.execute(sa.text("SELECT count(*) FROM alembic_version")).scalar() == 1
        assert migrate.current(engine) == migrate.head() and schema_diff(engine) == []
    finally:
        engine.dispose()
