"""What the server does when something unexpected breaks during an answer: the client hears of it (an
`internal` error frame, a 500 with a message on REST, never a stack trace) and the server logs it; what
was accepted stays stored. Also: a setting that cannot be used stops the CLI with its name and reason."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

from fastapi.testclient import TestClient

from bot.server.app import create_app
from feedback import repo
from tests.support.common import wait_until
from tests.support.fakes import FakeGenerator

CLI = str(Path(sys.executable).parent / "supportloop")


class BrokenGenerator(FakeGenerator):
    """Fails every answer with an error nobody planned for."""

    def _generate(self, request, emit, cancel):
        raise KeyError("an unexpected bug in the engine")


def test_an_unexpected_failure_during_an_answer_reaches_the_client_and_the_log(settings, store, caplog):
    app = create_app(settings, generator=BrokenGenerator(), store=store)
    with TestClient(app, raise_server_exceptions=False) as client:
        wait_until(lambda: client.get("/readyz").status_code == 200)
        with caplog.at_level(logging.ERROR), client.websocket_connect("/ws/chat") as ws:
            ws.send_text('{"type": "user_message", "text": "Hello?"}')
            session = ws.receive_json()
            error = ws.receive_json()
            assert error == {
                "type": "error",
                "code": "internal",
                "message": "The server failed to answer; please try again.",
            }
            ws.send_text('{"type": "user_message", "text": "Still there?"}')  # the connection stays usable
            assert ws.receive_json()["code"] == "internal"
        assert "an unexpected bug in the engine" in caplog.text  # logged with its traceback, for the team
        rest = client.post("/api/chat", json={"message": "Hi"})
        assert rest.status_code == 500 and "Traceback" not in rest.text and rest.json()["detail"]
    with store.session() as s:  # the customer's messages were accepted and are kept
        texts = [m.text for m in repo.list_messages(s, conversation_id=session["session_id"])]
    assert texts == ["Hello?", "Still there?"]


def test_a_bad_setting_stops_the_cli_naming_it_without_a_traceback(tmp_path):
    env = {**os.environ, "SUPPORTLOOP_DATA_DIR": str(tmp_path), "SUPPORTLOOP_HANDOFF_HOURS": "weekdays",
           "SUPPORTLOOP_MAX_BATCH": "0"}  # fmt: skip
    result = subprocess.run([CLI, "db", "upgrade"], env=env, capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "SUPPORTLOOP_HANDOFF_HOURS: Value error, cannot read 'weekdays'" in result.stderr
    assert "SUPPORTLOOP_MAX_BATCH: Input should be greater than or equal to 1" in result.stderr


def test_serving_to_other_machines_with_every_origin_allowed_warns_loudly():
    from bot.commands.serving import origins_warning

    assert "any web page can embed this chat" in origins_warning("0.0.0.0", ["*"])
    assert origins_warning("127.0.0.1", ["*"]) is None  # the demo on this machine
    assert origins_warning("0.0.0.0", ["https://shop.example"]) is None
