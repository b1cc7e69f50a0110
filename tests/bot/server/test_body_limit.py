"""Request bodies over the limit are refused with 413 before they are read whole, over a real port: a
declared size is refused at once (the body is never sent), a streamed one as soon as it passes the
limit; the knowledge-base upload has its own, larger limit; votes keep their fast path's limit."""

from __future__ import annotations

import socket

import httpx
import pytest

from bot.server.app import create_app
from feedback import repo
from feedback.models import StaffRole
from tests.support.fakes import FakeGenerator, HashEmbedder
from tests.support.services import LiveServer


@pytest.fixture
def server(settings, store):
    small = settings.model_copy(update={"max_body_bytes": 4096, "max_upload_bytes": 65536, "rate_limit": "1000/minute"})
    with LiveServer(create_app(small, generator=FakeGenerator(), store=store, embedder=HashEmbedder())) as live:
        yield live


def _raw(port: int, head: str, body: bytes = b"") -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head.encode() + body)
        return sock.recv(65536).decode(errors="replace")


def test_a_declared_body_over_the_limit_is_refused_before_it_is_sent(server):
    head = (f"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {50 << 20}\r\n\r\n")  # fmt: skip
    reply = _raw(server.port, head)  # no body at all: the answer comes without reading one
    assert reply.startswith("HTTP/1.1 413") and "larger than 4096 bytes" in reply


def test_a_streamed_body_is_cut_off_once_it_passes_the_limit(server):
    chunks = [b"1000\r\n" + b"x" * 4096 + b"\r\n"] * 3  # 12 KiB in chunks of 4 KiB, no length declared
    head = "POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    reply = _raw(server.port, head, b"".join(chunks))
    assert reply.startswith("HTTP/1.1 413") and "nothing was read or stored" in reply
    assert httpx.post(server.url + "/api/chat", json={"message": "Hi"}).status_code == 200  # still serving


def test_uploads_to_the_knowledge_base_have_their_own_limit(server, store):
    with store.session() as s:
        token = repo.create_staff(s, name="ada", role=StaffRole.admin)[1]
    page = ("# Parking\n\n" + "Parking is free for guests. " * 300).encode()  # ~8 KiB: over the default limit
    upload = httpx.post(server.url + "/api/admin/knowledge", headers={"Authorization": f"Bearer {token}"},
                        data={"source": "help"}, files={"files": ("parking.md", page, "text/markdown")})  # fmt: skip
    assert upload.status_code == 201, upload.text
    huge = httpx.post(server.url + "/api/admin/knowledge", headers={"Authorization": f"Bearer {token}"},
                      data={"source": "help"}, files={"files": ("big.md", page * 10, "text/markdown")})  # fmt: skip
    assert huge.status_code == 413 and "65536" in huge.json()["detail"]
