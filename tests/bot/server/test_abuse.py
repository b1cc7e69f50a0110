"""Abuse (issue 21) over real sockets on a real port: when one client address floods the server, the
batch's freed slots go to the other addresses first (`SUPPORTLOOP_FAIR_SHARE`) while the flood's other
messages wait their turn; an address alone still gets the whole batch; and a client that never reads its
socket stalls nobody. Clients are told apart as behind a proxy
(`X-Forwarded-For`, which uvicorn trusts from loopback). The TTFT numbers on the real model are in
`bench/abuse.py`."""

from __future__ import annotations

import base64
import json
import os
import socket
import threading
import time
from collections import Counter

import httpx
import pytest
from sqlmodel import select
from websockets.sync.client import connect

from bot.server.app import create_app
from feedback.models import Message, Role
from tests.support.common import wait_until
from tests.support.fakes import FakeGenerator
from tests.support.services import LiveServer


class Counting(FakeGenerator):
    """Counts, per sender (the text before ':' in the question), the answers inside the generator at once."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.now: Counter[str] = Counter()
        self.peak: Counter[str] = Counter()
        self.counting = threading.Lock()

    def submit(self, request, emit, cancel):
        who = request.messages[-1]["content"].split(":")[0]
        with self.counting:
            self.now[who] += 1
            self.peak[who] = max(self.peak[who], self.now[who])
        future = super().submit(request, emit, cancel)
        future.add_done_callback(lambda _: self._done(who))
        return future

    def _done(self, who: str) -> None:
        with self.counting:
            self.now[who] -= 1


@pytest.fixture
def served(settings, store):
    def serve(fake, **changes):
        app = create_app(settings.model_copy(update=changes), generator=fake, store=store)
        return app, LiveServer(app)

    return serve


def _ask(url: str, address: str, text: str, finished: dict, key: str) -> None:
    headers = {"X-Forwarded-For": address}
    with connect(url.replace("http", "ws") + "/ws/chat", additional_headers=headers, open_timeout=10) as ws:
        ws.send(json.dumps({"type": "user_message", "text": text}))
        while (frame := json.loads(ws.recv(timeout=60)))["type"] not in ("done", "error"):
            pass
    finished[key] = (time.monotonic(), frame["type"])


def test_a_flooding_client_gets_its_share_and_the_others_are_served_before_its_backlog(served):
    fake = Counting("An answer of a few words.", delay=0.05)
    _, server = served(fake, max_batch=4)
    finished: dict = {}
    with server:
        flood = [threading.Thread(target=_ask, args=(server.url, "203.0.113.66", f"flood: {i}", finished, f"f{i}"))
                 for i in range(12)]  # fmt: skip
        for thread in flood:
            thread.start()
        wait_until(lambda: fake.now["flood"] == 4, timeout=10)
        good = [threading.Thread(target=_ask, args=(server.url, f"198.51.100.{i}", f"good {i}: hi", finished, f"g{i}"))
                for i in range(3)]  # fmt: skip
        for thread in good:
            thread.start()
        for thread in flood + good:
            thread.join(timeout=60)
    assert {outcome for _, outcome in finished.values()} == {"done"} and len(finished) == 15  # waited, not refused
    assert fake.peak["flood"] == 4  # alone, the flood had the whole batch
    last_good = max(at for key, (at, _) in finished.items() if key.startswith("g"))
    flood_after = [key for key, (at, _) in finished.items() if key.startswith("f") and at > last_good]
    assert len(flood_after) >= 6, "the others waited behind the flood's backlog"


def test_one_address_alone_gets_the_whole_batch(served):
    """Everyone behind one proxy address (or one busy customer) is not held to a share: nobody else waits."""
    fake = Counting("An answer.", delay=0.05)
    _, server = served(fake, max_batch=4)
    finished: dict = {}
    with server:
        threads = [threading.Thread(target=_ask, args=(server.url, "203.0.113.7", f"all: {i}", finished, i))
                   for i in range(8)]  # fmt: skip
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    assert len(finished) == 8 and fake.peak["all"] == 4  # the whole batch, then the rest in turn


def _silent_socket(url: str, address: str, text: str) -> socket.socket:
    """A chat socket that sends one message and never reads (a tiny receive buffer, raw WebSocket framing:
    a client library would read in the background)."""
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.connect(("127.0.0.1", int(url.rsplit(":", 1)[1])))
    key = base64.b64encode(os.urandom(16)).decode()
    raw.sendall(
        f"GET /ws/chat HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nX-Forwarded-For: {address}\r\n\r\n".encode()
    )
    response = b""
    while b"\r\n\r\n" not in response:
        response += raw.recv(1)
    assert response.startswith(b"HTTP/1.1 101"), response
    payload, mask = json.dumps({"type": "user_message", "text": text}).encode(), os.urandom(4)
    assert len(payload) < 126
    raw.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
    return raw


def test_a_client_that_never_reads_stalls_nobody(served):
    megabytes = " ".join(f"{i:04d}" + "x" * 1000 for i in range(4096))  # 4 MB of frames: more than TCP buffers
    fake = FakeGenerator("A short answer.")
    fake.enqueue(megabytes)
    app, server = served(fake, max_new_tokens=4096)
    with server:
        silent = _silent_socket(server.url, "203.0.113.9", "tell me everything")
        wait_until(lambda: fake.pending == 0 and len(fake.requests) == 1, timeout=30)  # generated, unread
        started = time.monotonic()
        for i in range(3):
            reply = httpx.post(
                server.url + "/api/chat", json={"message": f"hi {i}"}, headers={"X-Forwarded-For": f"198.51.100.{i}"}
            )
            assert reply.status_code == 200 and reply.json()["reply"] == "A short answer."
        with connect(server.url.replace("http", "ws") + "/ws/chat") as ws:
            ws.send(json.dumps({"type": "user_message", "text": "and over a socket?"}))
            while json.loads(ws.recv(timeout=10))["type"] != "done":
                pass
        assert time.monotonic() - started < 10
        with app.state.store.session() as s:  # the silent client's answer is still stuck in its socket
            answers = s.exec(select(Message).where(Message.role == Role.assistant)).all()
        assert len(answers) == 4 and all(len(m.text) < 100 for m in answers)
        silent.close()
        wait_until(lambda: not app.state.limits.open, timeout=60)  # the silent client's slot is given back
