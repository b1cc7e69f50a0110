"""Crash safety (issue 21): the server process is killed with SIGKILL while 16 customers stream answers
and vote and two agents save corrections; after a restart on the same store, every answer a customer
saw `done` for, every vote and every correction that got a 2xx is there, whole (a correction with its
audit entry), and the server serves again. On a real SQLite file and on real PostgreSQL; the server is a
real process (`tests.support.fakeserver`: the product's app with the fake generator).

And a power cut for SQLite: the server is frozen (SIGSTOP) at random moments under the same load and its
database file and WAL copied while it is frozen, as a crash at that instant leaves them; every copy opens
without corruption (`PRAGMA integrity_check`) and holds every vote acknowledged before the freeze; the
same copy with its WAL cut at a random byte (the unsynced tail a power cut can lose) still opens whole.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sqlite3
import threading
import time
from pathlib import Path

import httpx
import pytest
from sqlmodel import select
from websockets.sync.client import connect

from feedback import repo
from feedback.db import open_store
from feedback.models import Correction, Feedback, Message, StaffAction, StaffRole
from tests.support import fakeserver
from tests.support.common import drop_postgres, postgres_url, wait_until
from tests.support.services import free_port

CUSTOMERS, AGENTS = 16, 2


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    url = postgres_url()
    yield url
    drop_postgres(url)


class Load:
    """Customers who ask and vote on each answer, and agents who correct answers, until the server goes;
    what the server acknowledged, with when (time.monotonic)."""

    def __init__(self, url: str, staff_tokens: list[str]) -> None:
        self.url, self.staff_tokens = url, staff_tokens
        self.answers: list[dict] = []  # done frames (+ the streamed text)
        self.votes: dict[str, tuple[str, float]] = {}  # message id → (thumb, acknowledged at)
        self.corrections: dict[int, str] = {}  # correction id → text
        self.failures: list[tuple[float, str]] = []  # (when, what): before the crash there must be none
        self.lock, self.stop = threading.Lock(), threading.Event()
        self.threads = [threading.Thread(target=self._customer, args=(i,)) for i in range(CUSTOMERS)]
        self.threads += [threading.Thread(target=self._agent, args=(token,)) for token in staff_tokens]

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)

    def _customer(self, number: int) -> None:
        try:
            with connect(self.url.replace("http", "ws") + "/ws/chat", open_timeout=10) as ws:
                ws.send(json.dumps({"type": "hello", "protocol": 2}))
                secret = {"X-Session-Token": json.loads(ws.recv(timeout=10))["session_token"]}
                with httpx.Client(base_url=self.url, headers=secret, timeout=10) as http:
                    for turn in range(10_000):
                        if self.stop.is_set():
                            return
                        self._turn(ws, http, f"customer {number}, question {turn}", "up" if turn % 2 else "down")
        except Exception as exc:  # the server died under us: what was acknowledged is recorded
            self._failed(exc)

    def _failed(self, exc: Exception) -> None:
        with self.lock:
            self.failures.append((time.monotonic(), f"{type(exc).__name__}: {exc}"))

    def failures_before(self, moment: float) -> list[str]:
        with self.lock:
            return [what for at, what in self.failures if at < moment]

    def _turn(self, ws, http: httpx.Client, question: str, thumb: str) -> None:
        ws.send(json.dumps({"type": "user_message", "text": question}))
        text = ""
        while (frame := json.loads(ws.recv(timeout=10)))["type"] == "token":
            text += frame["text"]
        assert frame["type"] == "done", frame
        with self.lock:
            self.answers.append({**frame, "text": text})
        vote = http.post(f"/api/messages/{frame['message_id']}/feedback", json={"thumb": thumb})
        if vote.status_code == 200:
            with self.lock:
                self.votes[frame["message_id"]] = (thumb, time.monotonic())

    def _agent(self, token: str) -> None:
        try:
            with httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=10) as http:
                for n in range(10_000):
                    if self.stop.is_set():
                        return
                    with self.lock:
                        target = random.choice(self.answers)["message_id"] if self.answers else None
                    if target is None:  # nothing answered yet
                        time.sleep(0.05)
                        continue
                    text = f"A better answer, number {n} by {token[-6:]}."
                    saved = http.post(f"/api/messages/{target}/corrections", json={"text": text, "approve": n % 2 == 0})
                    if saved.status_code == 201:
                        with self.lock:
                            self.corrections[saved.json()["id"]] = text
                    else:
                        raise AssertionError(f"correction refused: {saved.status_code} {saved.text}")
        except Exception as exc:
            self._failed(exc)


def _staff(url: str) -> list[str]:
    store = open_store(url)
    with store.session() as s:
        tokens = [repo.create_staff(s, name=f"agent{i}", role=StaffRole.agent)[1] for i in range(AGENTS)]
    store.dispose()
    return tokens


def test_kill_9_under_load_loses_nothing_that_was_acknowledged(database, tmp_path):
    port = free_port()
    server = fakeserver.start(tmp_path, database, port)  # migrates the store
    url = f"http://127.0.0.1:{port}"
    try:
        with Load(url, _staff(database)) as load:
            wait_until(lambda: load.failures or (len(load.answers) >= 30 and len(load.votes) >= 20
                                                 and len(load.corrections) >= 6), 120)  # fmt: skip
            time.sleep(random.uniform(0.0, 0.5))  # then at a random moment, mid-stream, mid-vote, mid-save
            killed_at = time.monotonic()
            server.send_signal(signal.SIGKILL)  # while the customers and agents are at it
            server.wait()
    finally:
        if server.poll() is None:  # the load failed before the kill: do not leave the server behind
            server.kill()
            server.wait()
    assert load.failures_before(killed_at) == []
    server = fakeserver.start(tmp_path, database, port)  # the same store, after the crash
    try:
        store = open_store(database)
        with store.session() as s:
            stored = {m.id: m for m in s.exec(select(Message).where(Message.role == "assistant"))}
            votes = {v.message_id: v.thumb.value for v in s.exec(select(Feedback))}
            corrections = {c.id: c for c in s.exec(select(Correction))}
            audited = {a.target for a in s.exec(select(StaffAction)) if a.action.startswith("correction.")}
        missing = [a["message_id"] for a in load.answers if stored.get(a["message_id"]) is None]
        assert missing == [] and all(stored[a["message_id"]].text == a["text"] for a in load.answers)
        assert {m: thumb for m, (thumb, _) in load.votes.items() if votes.get(m) != thumb} == {}
        assert all(corrections[i].text == text for i, text in load.corrections.items())
        assert {str(i) for i in corrections} <= audited  # no correction without its audit entry
        store.dispose()
        assert httpx.get(url + "/readyz").status_code == 200
        reply = httpx.post(url + "/api/chat", json={"message": "Still there?"})
        assert reply.status_code == 200 and reply.json()["reply"] == fakeserver.ANSWER
    finally:
        server.kill()
        server.wait()


def _copy_while_frozen(server, db: str, folder, n: int) -> tuple[str, float]:
    """Freeze the server, copy its database and WAL, thaw it; the copy and when the freeze began."""
    server.send_signal(signal.SIGSTOP)
    frozen_at = time.monotonic()
    try:
        target = str(folder / f"copy{n}.db")
        for suffix in ("-wal", ""):  # the WAL first: a frozen process writes neither, so any order is the same
            if os.path.exists(db + suffix):
                shutil.copyfile(db + suffix, target + suffix)
    finally:
        server.send_signal(signal.SIGCONT)
    return target, frozen_at


def _opens_whole(path: str) -> set[str]:
    """The message ids with a vote in the copy, after checking that it opens without corruption."""
    connection = sqlite3.connect(path)
    try:
        assert connection.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert connection.execute("PRAGMA foreign_key_check").fetchall() == []
        return {row[0] for row in connection.execute("SELECT message_id FROM feedback")}
    finally:
        connection.close()


def test_a_power_cut_leaves_a_sqlite_store_that_opens_whole(tmp_path):
    db = str(tmp_path / "store.db")
    port = free_port()
    server = fakeserver.start(tmp_path, f"sqlite:///{db}", port)
    copies = tmp_path / "copies"
    copies.mkdir()
    try:
        with Load(f"http://127.0.0.1:{port}", _staff(f"sqlite:///{db}")) as load:
            wait_until(lambda: load.failures or len(load.votes) >= 10, 120)
            assert load.failures_before(time.monotonic()) == []
            for n in range(8):
                time.sleep(random.uniform(0.1, 0.5))
                copy, frozen_at = _copy_while_frozen(server, db, copies, n)
                with load.lock:
                    acknowledged = {m for m, (_, at) in load.votes.items() if at < frozen_at}
                assert acknowledged <= _opens_whole(copy), "a vote acknowledged before the cut is missing"
                torn = str(copies / f"torn{n}.db")
                shutil.copyfile(copy, torn)
                if os.path.exists(copy + "-wal"):
                    wal = Path(copy + "-wal").read_bytes()
                    with open(torn + "-wal", "wb") as cut:
                        cut.write(wal[: random.randrange(len(wal) + 1)])
                _opens_whole(torn)
    finally:
        server.kill()
        server.wait()
