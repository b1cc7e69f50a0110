"""Paths and small helpers every test folder uses."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FAQ = ROOT.parent / "shared" / "data" / "dstc9-faq" / "faq_qa.jsonl"
ARTIFACTS = Path(os.environ.get("SUPPORTLOOP_ARTIFACTS", ROOT / "test-artifacts"))  # screenshots
CHROMIUM = shutil.which("chromium")
CLI = str(Path(sys.executable).parent / "supportloop")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="NO CHROMIUM: the browser tests (widget, staff console) did not run; install "
    "Debian's chromium package (`make test` does when run as root)",
)
PG_ADMIN_URL = os.environ.get("SUPPORTLOOP_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def postgres_url() -> str:
    """A fresh database on the local PostgreSQL, for one test."""
    from tests.support.services import postgres_database

    return postgres_database(PG_ADMIN_URL, "supportloop_test")


def drop_postgres(url: str) -> None:
    from tests.support.services import drop_database

    drop_database(url, PG_ADMIN_URL)


def registry_entries(adapters_dir: Path) -> list[str]:
    """The adapter registry's entries, but for the anchors' cache."""
    from trainer.anchors import ANCHORS_DIR

    return sorted(p.name for p in Path(adapters_dir).iterdir() if p.name != ANCHORS_DIR)


def wait_until(predicate, timeout: float = 30.0, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


def ask_over_websocket(ws_url: str, text: str) -> dict:
    """One question on a new chat socket of a live server: the `done` frame with the streamed `text`."""
    import json

    from websockets.sync.client import connect

    with connect(ws_url, open_timeout=30) as ws:
        ws.send(json.dumps({"type": "user_message", "text": text}))
        frames = []
        while not frames or frames[-1]["type"] not in ("done", "error"):
            frames.append(json.loads(ws.recv(timeout=300)))
    assert frames[0]["type"] == "session" and frames[-1]["type"] == "done", frames
    return {"text": "".join(f["text"] for f in frames if f["type"] == "token").strip(), **frames[-1]}


def customer_headers(store, *, message_id: str | None = None, session_id: str | None = None) -> dict[str, str]:
    """The `X-Session-Token` header of the customer whose session is `session_id` (or holds `message_id`),
    for conversations a test put in the store itself: the session is given a known secret."""
    from feedback import repo
    from feedback.models import Conversation
    from feedback.tokens import hash_token

    with store.session() as session:
        if session_id is None:
            session_id = repo.get_message(session, message_id=message_id).conversation_id
        conversation = session.get(Conversation, session_id)
        token = f"test-secret-{session_id}"
        conversation.token_hash = hash_token(token)
        session.add(conversation)
        session.commit()
    return {"X-Session-Token": token}


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """The installed `supportloop` command, as a user runs it."""
    return subprocess.run([CLI, *args], capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=300)


def schema_diff(engine) -> list:
    """What differs between the migrated schema at `engine` and the models (nothing, when they agree)."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlmodel import SQLModel

    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return compare_metadata(context, SQLModel.metadata)
