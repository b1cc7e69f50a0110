"""The staff API and customers' feedback over HTTP, on a real SQLite file and the real PostgreSQL:
roles, the review queue, correction conflicts, the audit trail, bad input, concurrency, outages."""

from __future__ import annotations

import socket
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlmodel import select

from bot.server.app import create_app
from feedback import repo
from feedback.db import Store, open_store
from feedback.models import Feedback, Role, StaffRole, Thumb
from tests.support.common import customer_headers, drop_postgres, postgres_url, wait_until
from tests.support.fakes import FakeGenerator
from tests.support.services import LiveServer


@pytest.fixture
def client(settings, any_store):
    with TestClient(create_app(settings, generator=FakeGenerator(), store=any_store)) as client:
        wait_until(lambda: client.get("/readyz").status_code == 200)
        yield client


@pytest.fixture
def people(any_store) -> dict:
    """Bearer headers of an admin and two agents."""
    headers = {}
    with any_store.session() as s:
        for name, role in (("ada", StaffRole.admin), ("bob", StaffRole.agent), ("cy", StaffRole.agent)):
            staff, token = repo.create_staff(s, name=name, role=role)
            headers[name] = {"Authorization": f"Bearer {token}"}
            headers[name + "_id"] = staff.id
    return headers


def _answer(store: Store, question: str, answer: str, version: str = "base") -> str:
    with store.session() as s:
        conversation = repo.get_or_create_conversation(s, conversation_id=None, system_prompt="Be brief.")
        repo.add_message(s, conversation_id=conversation.id, role=Role.user, text=question)
        return repo.add_message(
            s, conversation_id=conversation.id, role=Role.assistant, text=answer, adapter_version=version
        ).id


def test_roles_are_enforced(client, people):
    created = client.post("/api/staff", json={"name": "dee", "role": "agent"}, headers=people["ada"])
    assert created.status_code == 201 and created.json()["token"].startswith("slt_")
    listed = client.get("/api/staff", headers=people["ada"]).json()
    assert [s["name"] for s in listed] == ["ada", "bob", "cy", "dee"] and all("token" not in s for s in listed)
    for method, url in (
        ("GET", "/api/staff"),
        ("POST", "/api/staff"),
        ("PATCH", f"/api/staff/{people['cy_id']}"),
        ("GET", "/api/audit"),
    ):
        refused = client.request(method, url, json={"name": "eve"}, headers=people["bob"])
        assert refused.status_code == 403 and "admin" in refused.json()["detail"], url
    assert client.get("/api/review").status_code == 401
    assert client.get("/api/review", headers=people["bob"]).status_code == 200
    disabled = client.patch(f"/api/staff/{people['cy_id']}", json={"disabled": True}, headers=people["ada"])
    assert disabled.status_code == 200 and disabled.json()["disabled"] is True
    message_id = _answer(client.app.state.store, "Q?", "A.")
    refused = client.post(f"/api/messages/{message_id}/corrections", json={"text": "B."}, headers=people["cy"])
    assert refused.status_code == 403 and "disabled" in refused.json()["detail"]
    last_admin = client.patch(f"/api/staff/{people['ada_id']}", json={"role": "agent"}, headers=people["ada"])
    assert last_admin.status_code == 422 and "no active admin" in last_admin.json()["detail"]
    assert client.post("/api/staff", json={"name": "dee"}, headers=people["ada"]).status_code == 409
    assert client.post("/api/staff", json={"name": "x", "role": "boss"}, headers=people["ada"]).status_code == 422


def test_review_queue_orders_filters_and_pages(client, people, any_store):
    ids = {}
    for key, version in (
        ("old_down", "base"),
        ("handoff", "base"),
        ("recent", "v1-x"),
        ("new_down", "v1-x"),
        ("reviewed", "base"),
    ):
        ids[key] = _answer(any_store, f"question {key}", f"answer {key}", version)
    for key, reason in (("old_down", "wrong"), ("new_down", "outdated"), ("reviewed", "wrong")):
        assert (
            client.post(
                f"/api/messages/{ids[key]}/feedback",
                json={"thumb": "down", "reason": reason},
                headers=customer_headers(any_store, message_id=ids[key]),
            ).status_code
            == 200
        )
    with any_store.session() as s:
        session_id = repo.get_message(s, message_id=ids["handoff"]).conversation_id
    asked = client.post(
        f"/api/sessions/{session_id}/handoff",
        json={"note": "human please"},
        headers=customer_headers(any_store, session_id=session_id),
    )
    assert asked.status_code == 201
    client.post(
        f"/api/messages/{ids['reviewed']}/corrections", json={"text": "fixed", "approve": True}, headers=people["bob"]
    )

    def keys(**params) -> list[str]:
        page = client.get("/api/review", params=params, headers=people["bob"]).json()
        return [next(k for k, v in ids.items() if v == item["message"]["id"]) for item in page["items"]]

    assert keys() == ["new_down", "old_down", "handoff", "recent"]
    first = client.get("/api/review", params={"limit": 2}, headers=people["bob"]).json()
    assert first["total"] == 4 and [i["kind"] for i in first["items"]] == ["thumbs_down", "thumbs_down"]
    assert first["items"][0]["context"][0]["text"] == "question new_down"
    assert first["items"][0]["feedback"]["reason"] == "outdated"
    assert keys(limit=2, offset=2) == ["handoff", "recent"]
    assert keys(reason="wrong") == ["old_down"]
    assert keys(version="v1-x") == ["new_down", "recent"]
    assert keys(q="HANDOFF") == ["handoff"] and keys(q="100%_") == []
    assert "reviewed" in keys(include_reviewed="true")
    assert client.get("/api/review", params={"limit": 1000}, headers=people["bob"]).status_code == 422


def test_corrections_edit_approve_and_stale_edits(client, people):
    message_id = _answer(client.app.state.store, "When is breakfast?", "Never.")
    draft = client.post(
        f"/api/messages/{message_id}/corrections", json={"text": "7-10am."}, headers=people["bob"]
    ).json()
    assert draft["status"] == "draft" and draft["revision"] == 1
    url = f"/api/corrections/{draft['id']}"
    edited = client.patch(url, json={"text": "7-10:30am.", "revision": 1}, headers=people["cy"])
    assert edited.status_code == 200 and edited.json()["revision"] == 2
    stale = client.patch(url, json={"text": "bob's older edit", "revision": 1}, headers=people["bob"])
    assert stale.status_code == 409 and "someone else" in stale.json()["detail"]
    approved = client.post(f"{url}/approve", json={"revision": 2}, headers=people["bob"])
    assert approved.status_code == 200 and approved.json()["status"] == "approved"
    assert approved.json()["text"] == "7-10:30am." and approved.json()["reviewed_by"] == people["bob_id"]
    again = client.post(f"{url}/reject", headers=people["cy"])
    assert again.status_code == 409 and "already approved by bob" in again.json()["detail"]
    assert client.patch(url, json={"text": "late", "revision": 3}, headers=people["cy"]).status_code == 409
    assert client.post("/api/corrections/999999/approve", headers=people["bob"]).status_code == 404
    listed = client.get("/api/corrections", params={"status": "approved"}, headers=people["bob"]).json()
    assert [c["text"] for c in listed] == ["7-10:30am."]
    audit = client.get("/api/audit", headers=people["ada"]).json()
    assert [(a["action"], a["staff_id"]) for a in reversed(audit)] == [
        ("correction.create", people["bob_id"]),
        ("correction.edit", people["cy_id"]),
        ("correction.approve", people["bob_id"]),
    ]
    assert all(a["created_at"] for a in audit)


def test_bad_feedback_is_refused_and_keeps_the_earlier_vote(client, any_store):
    answer = _answer(any_store, "Hi", "Hello!")
    with any_store.session() as s:
        user_message = repo.list_messages(s, conversation_id=repo.get_message(s, message_id=answer).conversation_id)[0]
    url, customer = f"/api/messages/{answer}/feedback", customer_headers(any_store, message_id=answer)
    injection = "'); DROP TABLE feedback; --"
    ok = client.post(url, json={"thumb": "down", "reason": "wrong", "comment": injection}, headers=customer)
    assert ok.status_code == 200 and ok.json()["comment"] == injection
    refusals = [
        ("/api/messages/nope/feedback", {"thumb": "up"}, 404, "nope"),
        (f"/api/messages/{user_message.id}/feedback", {"thumb": "up"}, 422, "answers"),
        (url, {"thumb": "sideways"}, 422, "thumb"),
        (url, {"thumb": "down", "reason": "boring"}, 422, "reason"),
        (url, {"thumb": "up", "reason": "wrong"}, 422, "thumbs down"),
        (url, {"thumb": "down", "comment": "x" * 1_000_000}, 422, "comment"),
    ]
    for target, body, status, words in refusals:
        reply = client.post(target, json=body, headers=customer)
        assert reply.status_code == status and words in str(reply.json()["detail"]), (body, reply.text)
    with any_store.session() as s:
        votes = list(s.exec(select(Feedback)))
    assert [(v.thumb, v.reason.value, v.comment) for v in votes] == [(Thumb.down, "wrong", injection)]
    assert client.post("/api/sessions/nope/handoff", json={}, headers=customer).status_code == 404


def test_handoffs_are_listed_and_closed_once(client, people, any_store):
    answer = _answer(any_store, "Refund?", "No.")
    with any_store.session() as s:
        session_id = repo.get_message(s, message_id=answer).conversation_id
    customer = customer_headers(any_store, session_id=session_id)
    first = client.post(f"/api/sessions/{session_id}/handoff", json={"note": "angry"}, headers=customer).json()
    again = client.post(f"/api/sessions/{session_id}/handoff", json={}, headers=customer).json()
    assert first["id"] == again["id"] and again["note"] == "angry" and first["message_id"] == answer
    assert [h["id"] for h in client.get("/api/handoffs", headers=people["bob"]).json()] == [first["id"]]
    assert client.post(f"/api/handoffs/{first['id']}/close", headers=people["bob"]).status_code == 200
    assert client.post(f"/api/handoffs/{first['id']}/close", headers=people["cy"]).status_code == 409
    assert client.get("/api/handoffs", headers=people["bob"]).json() == []


def test_concurrent_voters_lose_nothing(settings, any_store):
    answers = [_answer(any_store, f"q{i}", f"a{i}") for i in range(40)]
    secrets = [customer_headers(any_store, message_id=answer) for answer in answers]
    with LiveServer(create_app(settings, generator=FakeGenerator(), store=any_store)) as server:

        def vote(i: int) -> int:
            with httpx.Client(base_url=server.url) as http:
                codes = [
                    http.post(
                        f"/api/messages/{answers[(i + k) % 40]}/feedback",
                        json={"thumb": "up" if k % 2 else "down"},
                        headers=secrets[(i + k) % 40],
                    ).status_code
                    for k in range(40)
                ]
            return max(codes)

        with ThreadPoolExecutor(16) as pool:
            assert set(pool.map(vote, range(16))) == {200}
    with any_store.session() as s:
        votes = list(s.exec(select(Feedback)))
    assert sorted(v.message_id for v in votes) == sorted(answers)  # one vote per answer, none lost or doubled


class TcpProxy:
    """Forwards a local port to PostgreSQL; `cut()` drops every connection and refuses new ones, the way
    a database outage looks to the app; `restore()` brings it back on the same port."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target, self.port = target, None
        self.sockets: list[socket.socket] = []
        self.listener = None

    def start(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", self.port or 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def _accept(self, listener) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src, dst) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> None:
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
        except OSError:
            pass
        self.listener.close()
        for sock in self.sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            except OSError:
                pass
        self.sockets = []


def test_database_outage_gives_503_and_the_server_recovers(settings):
    url = postgres_url()
    proxy = TcpProxy(("127.0.0.1", 5432))
    proxy.start()
    store = open_store(url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}"))
    try:
        answer = _answer(store, "Q?", "A.")
        customer = customer_headers(store, message_id=answer)
        with TestClient(create_app(settings, generator=FakeGenerator(), store=store)) as client:
            wait_until(lambda: client.get("/readyz").status_code == 200)
            assert (
                client.post(f"/api/messages/{answer}/feedback", json={"thumb": "up"}, headers=customer).status_code
                == 200
            )
            proxy.cut()
            down = client.post(f"/api/messages/{answer}/feedback", json={"thumb": "down"}, headers=customer)
            assert down.status_code == 503 and "database is unavailable" in down.json()["detail"]
            assert down.headers["retry-after"] == "5"
            proxy.start()  # the database is back
            back = client.post(
                f"/api/messages/{answer}/feedback", json={"thumb": "down", "reason": "wrong"}, headers=customer
            )
            assert back.status_code == 200 and back.json()["thumb"] == "down"
    finally:
        proxy.cut()
        store.dispose()
        drop_postgres(url)


def test_the_vote_fast_path_answers_like_the_documented_route(client, any_store):
    answer = _answer(any_store, "Hi", "Hello!")
    url, customer = f"/api/messages/{answer}/feedback", customer_headers(any_store, message_id=answer)
    assert url.replace(answer, "{message_id}") in client.get("/openapi.json").json()["paths"]
    json_body = {"Content-Type": "application/json", **customer}
    broken = client.post(url, content=b"{not json", headers=json_body)
    assert broken.status_code == 422 and broken.json()["detail"][0]["loc"][0] == "body"
    missing = client.post(url, json={}, headers=customer)
    assert missing.status_code == 422 and missing.json()["detail"][0]["loc"] == ["body", "thumb"]
    huge = client.post(url, content=b" " * (2 << 20), headers=json_body)
    assert huge.status_code == 413 and "at most" in huge.json()["detail"]
    anonymous = client.post(url, json={"thumb": "up"})
    assert anonymous.status_code == 401 and "X-Session-Token" in anonymous.json()["detail"]
    too_long = client.post(url, json={"thumb": "up"}, headers={"X-Session-Token": "x" * 129})
    assert too_long.status_code == 422 and "at most 128" in too_long.json()["detail"]
    cross = client.post(url, json={"thumb": "up"}, headers={"Origin": "https://shop.example", **customer})
    assert cross.status_code == 200 and cross.headers["access-control-allow-origin"] == "*"
    assert cross.json() == {"thumb": "up", "reason": None, "comment": None, "message_id": answer}
