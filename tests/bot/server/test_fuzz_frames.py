"""Property-based fuzzing of WebSocket frames: anything that is not a valid frame gets an error frame,
the connection stays open, and the server keeps answering."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from pydantic import ValidationError

from bot.server.app import create_app
from bot.server.protocol import ClientFrame
from tests.support.common import wait_until
from tests.support.fakes import FakeGenerator

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
TYPES = st.sampled_from(["hello", "user_message", "cancel", "token", "done", "", "USER_MESSAGE"]) | st.text(max_size=12)
FRAMES = st.one_of(
    st.text(max_size=200),
    JSON.map(json.dumps),
    st.fixed_dictionaries({"type": TYPES}, optional={"text": JSON, "session_id": JSON, "protocol": JSON}).map(
        json.dumps
    ),
)


def _is_valid(raw: str) -> bool:
    try:
        frame = ClientFrame.validate_json(raw)
    except ValidationError:
        return False
    return frame.type != "user_message" or bool(frame.text.strip())


def test_fuzzed_frames_only_get_error_frames(settings, store):
    with TestClient(create_app(settings, generator=FakeGenerator(), store=store)) as client:
        wait_until(lambda: client.get("/readyz").status_code == 200)
        with client.websocket_connect("/ws/chat") as ws:

            @hsettings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
            @given(FRAMES.filter(lambda raw: not _is_valid(raw)))
            def check(raw: str) -> None:
                ws.send_text(raw)
                reply = ws.receive_json()
                assert reply["type"] == "error" and reply["code"] and reply["message"]
                assert "Traceback" not in reply["message"]

            check()
            ws.send_text(json.dumps({"type": "user_message", "text": "still serving?"}))
            frames = [ws.receive_json()]
            while frames[-1]["type"] not in ("done", "error"):
                frames.append(ws.receive_json())
            assert frames[-1]["type"] == "done"
