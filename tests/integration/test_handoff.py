"""Live human handoff on the real SmolLM2 (its worker processes), a real websocket and a real staff
console socket on a real port: the model answers, the customer asks for a person, an agent takes over
(the model stays silent while they chat), hands back, and the model answers the next question with the
agent's reply in its context; the agent's reply waits as a draft correction of the rejected answer."""

from __future__ import annotations

import json

import httpx
import pytest
from websockets.sync.client import connect

from bot.runtime.base_model import pull_default_model
from bot.server.app import create_app
from bot.server.settings import Settings
from feedback import repo
from feedback.db import open_store
from feedback.models import CorrectionStatus, StaffRole
from tests.support.services import LiveServer

pytestmark = pytest.mark.integration


def _until(ws, kind: str) -> dict:
    while (frame := json.loads(ws.recv(timeout=300)))["type"] != kind:
        pass
    return frame


def test_a_person_takes_over_from_the_real_model_and_hands_back(tmp_path):
    cache = Settings().model_cache
    pull_default_model(cache, progress=False)
    settings = Settings(data_dir=tmp_path / "data", model_cache=cache, max_new_tokens=32, kb=False, memory=False)
    store = open_store(settings.db_url)
    with store.session() as s:
        token = repo.create_staff(s, name="bob", role=StaffRole.agent)[1]
    staff = {"Authorization": f"Bearer {token}"}
    with LiveServer(create_app(settings, store=store)) as server:
        console = connect(server.url.replace("http", "ws") + "/ws/staff", additional_headers=staff)
        customer = connect(server.url.replace("http", "ws") + "/ws/chat")
        customer.send(json.dumps({"type": "hello", "protocol": 2}))
        session = _until(customer, "session")
        session_id, mine = session["session_id"], {"X-Session-Token": session["session_token"]}
        customer.send(json.dumps({"type": "user_message", "text": "Can I bring my dog to the Acorn Guest House?"}))
        first = _until(customer, "done")
        asked = httpx.post(f"{server.url}/api/sessions/{session_id}/handoff", json={}, headers=mine).json()
        assert asked["available"] is True and asked["message_id"] == first["message_id"]

        assert httpx.post(f"{server.url}/api/handoffs/{asked['id']}/take", headers=staff).status_code == 200
        assert _until(customer, "agent_joined")["name"] == "bob"
        console.send(json.dumps({"type": "watch", "session_id": session_id}))
        _until(console, "watching")
        customer.send(json.dumps({"type": "user_message", "text": "Is it free?"}))
        assert _until(customer, "received")["message_id"]
        assert _until(console, "customer_message")["text"] == "Is it free?"
        reply = "Dogs are welcome at the Acorn Guest House for 10 GBP a night."
        sent = httpx.post(f"{server.url}/api/handoffs/{asked['id']}/messages", json={"text": reply}, headers=staff)
        assert sent.status_code == 201 and _until(customer, "agent_message")["text"] == reply

        assert httpx.post(f"{server.url}/api/handoffs/{asked['id']}/hand-back", headers=staff).status_code == 200
        assert _until(customer, "agent_left")["reason"] == "handed_back"
        customer.send(json.dumps({"type": "user_message", "text": "Thanks! How much was it per night?"}))
        text, frame = "", json.loads(customer.recv(timeout=300))
        while frame["type"] == "token":
            text, frame = text + frame["text"], json.loads(customer.recv(timeout=300))
        print("after hand-back:", text)
        assert frame["type"] == "done" and text.strip() and frame["adapter_version"] == "base"
        assert frame["prompt_tokens"] > first["prompt_tokens"] + 20  # the whole conversation, the agent's turn too
        transcript = httpx.get(f"{server.url}/api/sessions/{session_id}", headers=mine).json()["messages"]
        assert [m["role"] for m in transcript] == ["user", "assistant", "user", "agent", "user", "assistant"]
        customer.close()
        console.close()
    with store.session() as s:
        drafts = repo.list_corrections(s, message_id=first["message_id"])
        assert [(c.status, c.origin, c.text) for c in drafts] == [(CorrectionStatus.draft, "handoff", reply)]
    store.dispose()
