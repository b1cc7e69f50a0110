"""The server with a fake generator injected through the app factory: protocol, feedback, errors, swaps."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from bot.server.app import create_app
from feedback import repo
from feedback.models import StaffRole
from tests.support.common import wait_until
from tests.support.fakes import FakeGenerator


@pytest.fixture
def fake() -> FakeGenerator:
    return FakeGenerator()


@pytest.fixture
def client(settings, fake, store):
    app = create_app(settings, generator=fake, store=store)
    with TestClient(app) as client:
        wait_until(lambda: client.get("/readyz").status_code == 200)
        yield client


def _ask(ws, text: str) -> list[dict]:
    """Send a message; collect frames up to and including `done` or `error`."""
    ws.send_text(json.dumps({"type": "user_message", "text": text}))
    frames = []
    while not frames or frames[-1]["type"] not in ("done", "error"):
        frames.append(ws.receive_json())
    return frames


def test_websocket_frame_sequence(client, fake):
    fake.enqueue("Check-in is from 3pm.")
    with client.websocket_connect("/ws/chat") as ws:
        frames = _ask(ws, "When is check-in?")
    assert [f["type"] for f in frames] == ["session", "token", "token", "token", "token", "done"]
    assert "".join(f["text"] for f in frames if f["type"] == "token") == "Check-in is from 3pm."
    done = frames[-1]
    assert set(done) == {
        "type",
        "message_id",
        "adapter_version",
        "prompt_tokens",
        "completion_tokens",
        "ttft_ms",
        "total_ms",
        "sources",
    }
    assert done["adapter_version"] == "base" and done["completion_tokens"] == 4
    assert done["sources"] == []  # no knowledge base and no approved correction: nothing grounded it
    assert 0 <= done["ttft_ms"] <= done["total_ms"]
    transcript = client.app.state.store
    with transcript.session() as s:
        messages = repo.list_messages(s, conversation_id=frames[0]["session_id"])
    assert [(m.role.value, m.text, m.adapter_version) for m in messages] == [
        ("user", "When is check-in?", None),
        ("assistant", "Check-in is from 3pm.", "base"),
    ]
    assert messages[1].id == done["message_id"]


def test_hello_resumes_session_with_context(client, fake):
    fake.enqueue("First answer.", "Second answer.")
    with client.websocket_connect("/ws/chat") as ws:
        session = _ask(ws, "First question")[0]
    session_id, secret = session["session_id"], session["session_token"]
    with client.websocket_connect("/ws/chat") as ws:
        ws.send_text(json.dumps({"type": "hello", "protocol": 1, "session_id": session_id, "session_token": secret}))
        assert ws.receive_json() == {
            "type": "session", "session_id": session_id, "protocol": 1, "resumed": True, "session_token": None
        }  # fmt: skip
        frames = _ask(ws, "Second question")
    assert frames[0]["type"] == "token"  # the session was announced once, by hello
    context = [(m["role"], m["content"]) for m in fake.requests[-1].messages]
    assert context[1:] == [("user", "First question"), ("assistant", "First answer."), ("user", "Second question")]
    assert context[0][0] == "system"


@pytest.mark.parametrize(
    "raw, code",
    [
        ("not json", "bad_frame"),
        ("x" * 20_000, "frame_too_large"),
        (json.dumps({"type": "hello", "protocol": 99}), "unsupported_protocol"),
        (json.dumps({"type": "cancel"}), "nothing_to_cancel"),
        (json.dumps({"type": "teleport"}), "bad_frame"),
        (json.dumps({"type": "user_message"}), "bad_frame"),
        (json.dumps({"type": "user_message", "text": "   "}), "empty_message"),
        (json.dumps({"type": "user_message", "text": "x" * 201}), "message_too_long"),
    ],
)
def test_bad_frames_get_error_and_connection_stays_usable(client, raw, code):
    with client.websocket_connect("/ws/chat") as ws:
        ws.send_text(raw)
        error = ws.receive_json()
        assert error["type"] == "error" and error["code"] == code and error["message"]
        assert "Traceback" not in error["message"]
        assert _ask(ws, "still there?")[-1]["type"] == "done"


def test_binary_frame_is_refused(client):
    with client.websocket_connect("/ws/chat") as ws:
        ws.send_bytes(b"\x00\x01")
        assert ws.receive_json()["code"] == "bad_frame"


def test_rest_chat_and_feedback(client, fake):
    fake.enqueue("Yes, pets are welcome.")
    reply = client.post("/api/chat", json={"message": "Can I bring my dog?"}).json()
    assert reply["reply"] == "Yes, pets are welcome." and reply["adapter_version"] == "base"
    mine = {"X-Session-Token": reply["session_token"]}
    follow = client.post("/api/chat", json={"session_id": reply["session_id"], "message": "Thanks"}, headers=mine)
    assert follow.json()["session_id"] == reply["session_id"] and follow.json()["session_token"] is None
    vote = client.post(
        f"/api/messages/{reply['message_id']}/feedback",
        json={"thumb": "down", "reason": "wrong", "comment": "No pets."},
        headers=mine,
    )
    assert vote.status_code == 200 and vote.json()["thumb"] == "down"


@pytest.mark.parametrize(
    "body, status", [({"message": ""}, 422), ({"message": "y" * 201}, 422), ({}, 422), ({"message": 5}, 422)]
)
def test_rest_chat_rejects_bad_input(client, body, status):
    response = client.post("/api/chat", json=body)
    assert response.status_code == status and response.json()["detail"]


def test_feedback_errors(client):
    reply = client.post("/api/chat", json={"message": "hi"}).json()
    message_id, mine = reply["message_id"], {"X-Session-Token": reply["session_token"]}
    missing = client.post("/api/messages/nope/feedback", json={"thumb": "up"}, headers=mine)
    assert missing.status_code == 404 and "nope" in missing.json()["detail"]
    sideways = client.post(f"/api/messages/{message_id}/feedback", json={"thumb": "sideways"}, headers=mine)
    assert sideways.status_code == 422
    boring = client.post(
        f"/api/messages/{message_id}/feedback", json={"thumb": "down", "reason": "boring"}, headers=mine
    )
    assert boring.status_code == 422


def test_corrections_need_a_valid_staff_token(client, store):
    with store.session() as s:
        dee, token = repo.create_staff(s, name="dee", role=StaffRole.agent)
    reply = client.post("/api/chat", json={"message": "When is breakfast?"}).json()
    url = f"/api/messages/{reply['message_id']}/corrections"
    body = {"text": "Breakfast is 7-10am.", "approve": True}
    assert client.post(url, json=body).status_code == 401
    wrong = client.post(url, json=body, headers={"Authorization": "Bearer slt_wrong"})
    assert wrong.status_code == 401 and "wrong" in wrong.json()["detail"]
    ok = client.post(url, json=body, headers={"Authorization": f"Bearer {token}"})
    assert ok.status_code == 201 and ok.json()["status"] == "approved" and ok.json()["staff_id"] == dee.id
    auth = {"Authorization": f"Bearer {token}"}
    assert client.post("/api/messages/nope/corrections", json=body, headers=auth).status_code == 404
    assert client.post(url, json={"text": "  ", "approve": True}, headers=auth).status_code == 422
    with store.session() as s:
        user_message = repo.list_messages(s, conversation_id=reply["session_id"])[0]
    refused = client.post(f"/api/messages/{user_message.id}/corrections", json=body, headers=auth)
    assert refused.status_code == 422 and "assistant" in refused.json()["detail"]


def _publish(store, folder, version: str, valid: bool = True) -> None:
    path = folder / version
    path.mkdir(parents=True)
    if valid:
        (path / "adapter_config.json").write_text("{}")
    with store.session() as s:
        repo.register_adapter(
            s,
            version=version,
            path=str(path),
            base_model="tiny",
            parent=None,
            dataset_hash=None,
            metrics={},
            activate=True,
        )


def test_server_swaps_to_newly_active_adapter(settings, store, fake):
    capped = settings.model_copy(update={"max_loaded_adapters": 1})  # no room to keep the old version loaded
    with TestClient(create_app(capped, generator=fake, store=store)) as client:
        wait_until(lambda: client.get("/readyz").status_code == 200)
        assert client.post("/api/chat", json={"message": "hi"}).json()["adapter_version"] == "base"
        _publish(store, settings.adapters_dir, "v1-a")
        wait_until(lambda: client.get("/readyz").json()["adapter_version"] == "v1-a")
        assert client.post("/api/chat", json={"message": "hi"}).json()["adapter_version"] == "v1-a"
        _publish(store, settings.adapters_dir, "v2-b")
        wait_until(lambda: client.get("/readyz").json()["adapter_version"] == "v2-b")
        wait_until(lambda: list(fake.adapters) == ["v2-b"])  # the drained old version is unloaded (in the background)


def test_refused_adapter_keeps_old_version_serving(client, settings, store, caplog):
    _publish(store, settings.adapters_dir, "v1-broken", valid=False)
    manager = client.app.state.adapters
    wait_until(lambda: "v1-broken" in manager.refused)
    assert "adapter_config.json" in manager.refused["v1-broken"]
    assert any(
        r.levelname == "ERROR"
        and "refused adapter v1-broken, still serving base" in r.getMessage()
        and "adapter_config.json" in r.getMessage()
        for r in caplog.records
    )  # the reason is logged
    assert client.post("/api/chat", json={"message": "hi"}).json()["adapter_version"] == "base"


def test_ready_only_after_model_loaded(settings, store):
    fake = FakeGenerator()
    fake.release_load.clear()
    with TestClient(create_app(settings, generator=fake, store=store)) as client:
        assert client.get("/healthz").status_code == 200
        loading = client.get("/readyz")
        assert loading.status_code == 503 and loading.json()["status"] == "loading"
        busy = client.post("/api/chat", json={"message": "hi"})
        assert busy.status_code == 503 and "loading" in busy.json()["detail"]
        fake.release_load.set()
        wait_until(lambda: client.get("/readyz").status_code == 200)


def test_demo_page_embeds_the_widget_like_a_customer_site(client):
    page = client.get("/")
    assert page.status_code == 200 and '<script src="/widget.js"' in page.text


def test_widget_script_is_served_with_caching_headers_and_cors(client):
    script = client.get("/widget.js", headers={"Origin": "https://shop.example"})
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    assert "max-age=3600" in script.headers["cache-control"] and script.headers["access-control-allow-origin"] == "*"
    assert "customElements.define" in script.text and ".innerHTML" not in script.text  # text is never parsed as HTML
    again = client.get("/widget.js", headers={"If-None-Match": script.headers["etag"]})
    assert again.status_code == 304 and again.content == b""


def test_client_leaving_mid_answer_cancels_generation_over_real_socket(settings, store):
    from websockets.sync.client import connect

    from tests.support.services import LiveServer

    fake = FakeGenerator(delay=0.05)
    fake.enqueue(" ".join(f"word{i}" for i in range(200)))
    with LiveServer(create_app(settings, generator=fake, store=store)) as server:
        ws_url = server.url.replace("http", "ws") + "/ws/chat"
        with connect(ws_url) as ws:
            ws.send(json.dumps({"type": "user_message", "text": "tell me everything"}))
            left = json.loads(ws.recv(timeout=10))["session_id"]
            assert json.loads(ws.recv(timeout=10))["type"] == "token"
        wait_until(lambda: len(fake.cancelled) == 1, timeout=10)
        with connect(ws_url) as ws:  # the worker is free again: the next customer is served
            ws.send(json.dumps({"type": "user_message", "text": "hi"}))
            frames = [json.loads(ws.recv(timeout=10)) for _ in range(5)]
        assert [f["type"] for f in frames] == ["session", "token", "token", "token", "done"]
    with store.session() as s:  # the question is kept; no half answer is stored
        assert [m.role.value for m in repo.list_messages(s, conversation_id=left)] == ["user"]


def test_unknown_session_id_is_not_adopted(client):
    with client.websocket_connect("/ws/chat") as ws:
        ws.send_text(json.dumps({"type": "hello", "session_id": "someone-elses-guess"}))
        error, session = ws.receive_json(), ws.receive_json()
    assert error["code"] == "unknown_session"
    assert session["type"] == "session" and session["resumed"] is False
    assert session["session_id"] != "someone-elses-guess"


def test_cancel_stops_the_answer_and_the_connection_goes_on(settings, store):
    fake = FakeGenerator(delay=0.05)
    fake.enqueue(" ".join(f"w{i}" for i in range(200)), "Short answer.")
    with TestClient(create_app(settings, generator=fake, store=store)) as client:
        wait_until(lambda: client.get("/readyz").status_code == 200)
        with client.websocket_connect("/ws/chat") as ws:
            ws.send_text(json.dumps({"type": "user_message", "text": "long please"}))
            assert ws.receive_json()["type"] == "session"
            assert ws.receive_json()["type"] == "token"
            ws.send_text(json.dumps({"type": "user_message", "text": "another"}))
            frames = [ws.receive_json()]
            while frames[-1]["type"] == "token":
                frames.append(ws.receive_json())
            assert frames[-1]["code"] == "answer_in_progress"
            ws.send_text(json.dumps({"type": "cancel"}))
            while (frame := ws.receive_json())["type"] == "token":
                pass
            assert frame == {"type": "error", "code": "cancelled", "message": "The answer was cancelled."}
            assert [f["type"] for f in _ask(ws, "short one")][-1] == "done"
    assert len(fake.cancelled) == 1


def test_full_queue_answers_busy_and_keeps_nothing(settings, store):
    fake = FakeGenerator(max_pending=0)
    with TestClient(create_app(settings, generator=fake, store=store)) as client:
        wait_until(lambda: client.get("/readyz").status_code == 200)
        refused = client.post("/api/chat", json={"message": "hi"})
        assert refused.status_code == 429 and "busy" in refused.json()["detail"]
        with client.websocket_connect("/ws/chat") as ws:
            frames = _ask(ws, "hello?")
        assert frames[-1]["code"] == "busy"
        mine = {"X-Session-Token": frames[0]["session_token"]}
        assert client.get(f"/api/sessions/{frames[0]['session_id']}", headers=mine).json()["messages"] == []


def test_transcript_has_ids_versions_and_feedback(client, fake):
    fake.enqueue("Check-in is at 3pm.")
    reply = client.post("/api/chat", json={"message": "Check-in?"}).json()
    mine = {"X-Session-Token": reply["session_token"]}
    client.post(
        f"/api/messages/{reply['message_id']}/feedback", json={"thumb": "down", "reason": "wrong"}, headers=mine
    )
    transcript = client.get(f"/api/sessions/{reply['session_id']}", headers=mine).json()
    assert transcript["session_id"] == reply["session_id"]
    user, answer = transcript["messages"]
    assert (user["role"], user["text"], user["adapter_version"], user["feedback"]) == ("user", "Check-in?", None, None)
    assert answer["id"] == reply["message_id"] and answer["adapter_version"] == "base"
    assert answer["feedback"] == {"thumb": "down", "reason": "wrong", "comment": None}
    missing = client.get("/api/sessions/nope", headers=mine)
    assert missing.status_code == 404 and "nope" in missing.json()["detail"]
    anonymous = client.get(f"/api/sessions/{reply['session_id']}")
    assert anonymous.status_code == 401 and "X-Session-Token" in anonymous.json()["detail"]


def test_metrics_count_answers_tokens_and_refusals(client, fake):
    fake.enqueue("One two three.")
    client.post("/api/chat", json={"message": "hi"})
    client.post("/api/chat", json={"message": ""})
    text = client.get("/metrics").text
    assert 'supportloop_chat_requests_total{api="rest",outcome="ok"} 1.0' in text
    assert 'supportloop_chat_requests_total{api="rest",outcome="empty_message"} 1.0' in text
    assert 'supportloop_tokens_total{kind="completion"} 3.0' in text
    assert "supportloop_time_to_first_token_seconds_bucket" in text and "supportloop_queue_depth 0.0" in text
    assert 'supportloop_active_adapter{version="base"} 1.0' in text


def test_rate_limit_per_client(tmp_path, store):
    from bot.server.settings import Settings

    limited = Settings(data_dir=tmp_path, adapter_poll_seconds=0.1, rate_limit="2/minute")
    with TestClient(create_app(limited, generator=FakeGenerator(), store=store)) as client:
        wait_until(lambda: client.get("/readyz").status_code == 200)
        assert [client.post("/api/chat", json={"message": "hi"}).status_code for _ in range(2)] == [200, 200]
        refused = client.post("/api/chat", json={"message": "hi"})
        assert refused.status_code == 429 and "2/minute" in refused.json()["detail"]
        with client.websocket_connect("/ws/chat") as ws:
            assert _ask(ws, "hi")[-1]["code"] == "rate_limited"


def test_sessions_per_client_are_capped(tmp_path, store):
    from bot.server.settings import Settings

    capped = Settings(data_dir=tmp_path, adapter_poll_seconds=0.1, max_sessions_per_client=1)
    with TestClient(create_app(capped, generator=FakeGenerator(), store=store)) as client:
        with client.websocket_connect("/ws/chat") as first:
            with client.websocket_connect("/ws/chat") as second:
                assert second.receive_json()["code"] == "too_many_sessions"
            first.send_text(json.dumps({"type": "hello"}))
            assert first.receive_json()["type"] == "session"
        with client.websocket_connect("/ws/chat") as again:  # the slot was given back
            again.send_text(json.dumps({"type": "hello"}))
            assert again.receive_json()["type"] == "session"


def test_allowed_origins_for_browsers(tmp_path, store):
    from bot.server.settings import Settings

    strict = Settings(data_dir=tmp_path, adapter_poll_seconds=0.1, allowed_origins=["https://shop.example"])
    with TestClient(create_app(strict, generator=FakeGenerator(), store=store)) as client:
        preflight = client.options(
            "/api/chat", headers={"Origin": "https://shop.example", "Access-Control-Request-Method": "POST"}
        )
        assert preflight.headers["access-control-allow-origin"] == "https://shop.example"
        other = client.options(
            "/api/chat", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
        )
        assert "access-control-allow-origin" not in other.headers
        with client.websocket_connect("/ws/chat", headers={"Origin": "https://evil.example"}) as ws:
            assert ws.receive_json()["code"] == "origin_not_allowed"
        with client.websocket_connect("/ws/chat", headers={"Origin": "https://shop.example"}) as ws:
            ws.send_text(json.dumps({"type": "hello"}))
            assert ws.receive_json()["type"] == "session"


def test_bad_rate_setting_fails_loudly(tmp_path):
    from pydantic import ValidationError

    from bot.server.settings import Settings

    with pytest.raises(ValidationError, match="not a rate"):
        Settings(data_dir=tmp_path, rate_limit="lots")


def test_exact_frames_over_a_real_websocket(settings, store):
    from websockets.sync.client import connect

    from tests.support.services import LiveServer

    fake = FakeGenerator()
    fake.enqueue("Breakfast is 7-10am.")
    with (
        LiveServer(create_app(settings, generator=fake, store=store)) as server,
        connect(server.url.replace("http", "ws") + "/ws/chat") as ws,
    ):
        ws.send(json.dumps({"type": "hello", "protocol": 1}))
        session = json.loads(ws.recv(timeout=10))
        ws.send(json.dumps({"type": "user_message", "text": "Breakfast?"}))
        frames = [json.loads(ws.recv(timeout=10)) for _ in range(4)]
        ws.send("{oops")
        error = json.loads(ws.recv(timeout=10))
    assert session == {
        "type": "session", "session_id": session["session_id"], "protocol": 1, "resumed": False,
        "session_token": session["session_token"],
    }  # fmt: skip
    assert len(session["session_token"]) >= 43  # 256 random bits
    assert frames[:3] == [
        {"type": "token", "text": "Breakfast"},
        {"type": "token", "text": " is"},
        {"type": "token", "text": " 7-10am."},
    ]
    assert frames[3]["type"] == "done" and frames[3]["adapter_version"] == "base"
    assert error["type"] == "error" and error["code"] == "bad_frame"


def test_invalid_utf8_closes_only_that_connection(settings, store):
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    from tests.support.services import LiveServer

    with LiveServer(create_app(settings, generator=FakeGenerator(), store=store)) as server:
        url = server.url.replace("http", "ws") + "/ws/chat"
        with connect(url) as bystander, connect(url) as ws:
            ws.protocol.send_text(b"\xff\xfe not utf-8")  # a text frame that is not UTF-8
            ws.socket.sendall(b"".join(ws.protocol.data_to_send()))
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=10)
            assert closed.value.rcvd.code == 1007  # "invalid frame payload data"
            bystander.send(json.dumps({"type": "user_message", "text": "still there?"}))
            frames = [json.loads(bystander.recv(timeout=10)) for _ in range(5)]
        assert frames[-1]["type"] == "done"
