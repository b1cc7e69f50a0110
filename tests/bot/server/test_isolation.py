"""Customer isolation (issue 21): a customer reaches only their own session. Session and message ids are
shown to staff, in logs and in exports, so they open nothing by themselves: the session's secret, given
once when the session starts, is needed to read the transcript, vote, ask for a person, leave an email,
continue the session over REST or resume it over the WebSocket. Real sockets on a real port, on a real
SQLite file and on real PostgreSQL."""

from __future__ import annotations

import hashlib
import json

import httpx
import pytest
from sqlmodel import select
from websockets.sync.client import connect

from bot.server.app import create_app
from feedback import repo
from feedback.models import Conversation, Feedback, Handoff, Role, StaffRole
from tests.support.fakes import FakeGenerator
from tests.support.services import LiveServer


@pytest.fixture
def server(settings, any_store):
    app = create_app(settings.model_copy(update={"rate_limit": "1000/minute"}), generator=FakeGenerator("An answer."),
                     store=any_store)  # fmt: skip
    with LiveServer(app) as running:
        yield running


def _socket(url: str, **hello):
    ws = connect(url.replace("http", "ws") + "/ws/chat", open_timeout=10)
    ws.send(json.dumps({"type": "hello", "protocol": 2, **hello}))
    return ws


def _next(ws, kind: str | None = None) -> dict:
    frame = json.loads(ws.recv(timeout=10))
    assert kind is None or frame["type"] == kind, frame
    return frame


def _customer(url: str) -> dict:
    """A customer who asked one question over the WebSocket: their ids, secret and open socket."""
    ws = _socket(url)
    session = _next(ws, "session")
    ws.send(json.dumps({"type": "user_message", "text": "Where do I park?"}))
    while (frame := _next(ws))["type"] != "done":
        pass
    secret = {"X-Session-Token": session["session_token"]}
    return {"ws": ws, "session_id": session["session_id"], "answer": frame["message_id"], "secret": secret}


def test_a_customer_reaches_only_their_own_session(server, any_store):
    alice, bob = _customer(server.url), _customer(server.url)
    transcript = f"{server.url}/api/sessions/{bob['session_id']}"
    vote = f"{server.url}/api/messages/{bob['answer']}/feedback"
    handoff = f"{server.url}/api/sessions/{bob['session_id']}/handoff"
    contact = f"{server.url}/api/sessions/{bob['session_id']}/contact"
    for headers, status in (({}, 401), (alice["secret"], 404), ({"X-Session-Token": "guess"}, 404)):
        assert httpx.get(transcript, headers=headers).status_code == status
        refused = httpx.post(vote, json={"thumb": "up"}, headers=headers)
        assert refused.status_code == status and "Traceback" not in refused.text
        assert httpx.post(handoff, json={}, headers=headers).status_code == status
        assert httpx.post(contact, json={"email": "eve@example.com"}, headers=headers).status_code == status
    not_mine = httpx.post(vote, json={"thumb": "up"}, headers=alice["secret"]).json()["detail"]
    assert not_mine == httpx.post(
        f"{server.url}/api/messages/{'0' * 32}/feedback", json={"thumb": "up"}, headers=alice["secret"]
    ).json()["detail"].replace("0" * 32, bob["answer"])  # another's answer reads exactly like no answer
    with any_store.session() as s:  # nothing of it was stored
        assert s.exec(select(Feedback)).all() == [] and s.exec(select(Handoff)).all() == []

    # continuing Bob's session over REST with Alice's secret starts a session of Alice's own
    taken = httpx.post(
        f"{server.url}/api/chat", json={"session_id": bob["session_id"], "message": "Hi"}, headers=alice["secret"]
    ).json()
    assert taken["session_id"] != bob["session_id"] and taken["session_token"]
    mine = httpx.get(transcript, headers=bob["secret"])
    assert mine.status_code == 200 and [m["role"] for m in mine.json()["messages"]] == ["user", "assistant"]
    assert httpx.post(vote, json={"thumb": "down"}, headers=bob["secret"]).status_code == 200
    for customer in (alice, bob):
        customer["ws"].close()


def test_resuming_another_customer_s_session_starts_a_new_one_and_hears_nothing_of_it(server, any_store):
    bob = _customer(server.url)
    intruders = [
        _socket(server.url, session_id=bob["session_id"]),
        _socket(server.url, session_id=bob["session_id"], session_token="guess"),
    ]
    for intruder in intruders:
        assert _next(intruder, "error")["code"] == "unknown_session"
        session = _next(intruder, "session")
        assert session["resumed"] is False and session["session_id"] != bob["session_id"]
    with any_store.session() as s:
        agent_token = repo.create_staff(s, name="dee", role=StaffRole.agent)[1]
    staff = {"Authorization": f"Bearer {agent_token}"}
    asked = httpx.post(f"{server.url}/api/sessions/{bob['session_id']}/handoff", json={}, headers=bob["secret"])
    assert httpx.post(f"{server.url}/api/handoffs/{asked.json()['id']}/take", headers=staff).status_code == 200
    sent = httpx.post(f"{server.url}/api/handoffs/{asked.json()['id']}/messages", json={"text": "Bob?"}, headers=staff)
    assert sent.status_code == 201
    while (frame := _next(bob["ws"]))["type"] != "agent_message":
        pass
    assert frame["text"] == "Bob?"
    for intruder in intruders:  # the person's message went to Bob alone
        with pytest.raises(TimeoutError):
            intruder.recv(timeout=0.5)
    again = _socket(server.url, session_id=bob["session_id"], session_token=bob["secret"]["X-Session-Token"])
    assert _next(again, "session") | {"session_token": None} == {
        "type": "session", "session_id": bob["session_id"], "protocol": 2, "resumed": True, "session_token": None
    }  # fmt: skip  # Bob's own secret resumes it, and is not sent again
    for ws in (*intruders, again, bob["ws"]):
        ws.close()


def test_the_store_keeps_only_a_digest_and_older_sessions_stay_closed(server, any_store):
    bob = _customer(server.url)
    secret = bob["secret"]["X-Session-Token"]
    with any_store.session() as s:
        row = s.get(Conversation, bob["session_id"])
        assert row.token_hash == hashlib.sha256(secret.encode()).hexdigest() and secret not in row.model_dump_json()
        older = repo.get_or_create_conversation(s, conversation_id=None, system_prompt="")  # before secrets existed
        answer = repo.add_message(s, conversation_id=older.id, role=Role.assistant, text="Hi", adapter_version="base")
    for token in ("", "None", secret):
        headers = {"X-Session-Token": token} if token else {}
        assert httpx.get(f"{server.url}/api/sessions/{older.id}", headers=headers).status_code in (401, 404)
        refused = httpx.post(f"{server.url}/api/messages/{answer.id}/feedback", json={"thumb": "up"}, headers=headers)
        assert refused.status_code in (401, 404)
    resumed = _socket(server.url, session_id=older.id, session_token="None")
    assert _next(resumed, "error")["code"] == "unknown_session"
    assert _next(resumed, "session")["session_id"] != older.id
    resumed.close()
    bob["ws"].close()
