"""API fuzzing with schemathesis against the app's own OpenAPI schema, on a real port: every documented
route, with an admin's token and with none. No response ≥ 500, every status is one the schema documents
for the route (`bot/server/schema.py` lists each route's refusals), every response body conforms to the
schema, and every refusal is a 4xx with a message. (The short version for
`make test`, the same cases every run; `SUPPORTLOOP_FUZZ_EXAMPLES=N` runs N random cases per route.)

Not in the schema, fuzzed elsewhere: the chat WebSocket `/ws/chat` and the consoles' `/ws/staff`
(`test_fuzz_frames.py`, `test_handoff_live.py`), the vote fast path (`VoteIngest`, which answers the same
route as the documented one, tested in `test_app.py`), and the console's HTML pages. Left out here: the
admin's `POST /api/admin/train`, which starts a real training process per call."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from bot.server.app import create_app
from bot.server.settings import Settings
from feedback import repo
from feedback.db import open_store
from feedback.models import Role, StaffRole
from tests.support.common import wait_until
from tests.support.fakes import FakeGenerator, HashEmbedder
from tests.support.services import LiveServer

EXAMPLES = int(os.environ.get("SUPPORTLOOP_FUZZ_EXAMPLES", "15"))
RANDOM = "SUPPORTLOOP_FUZZ_EXAMPLES" in os.environ  # a longer run explores; `make test` repeats the same cases
LEFT_OUT = ("/api/admin/train",)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz")
    store = open_store(f"sqlite:///{folder / 'store.db'}")
    with store.session() as s:
        token = repo.create_staff(s, name="ada", role=StaffRole.admin)[1]
        conversation = repo.get_or_create_conversation(s, conversation_id=None, system_prompt="")
        repo.add_message(s, conversation_id=conversation.id, role=Role.user, text="Hi")
        repo.add_message(s, conversation_id=conversation.id, role=Role.assistant, text="Hello!", adapter_version="base")
    app_settings = Settings(data_dir=folder / "data", rate_limit="100000/minute", adapter_poll_seconds=0.5)
    app = create_app(app_settings, generator=FakeGenerator(), store=store, embedder=HashEmbedder())
    with LiveServer(app) as server:
        wait_until(lambda: httpx.get(server.url + "/readyz").status_code == 200)
        yield server, token
    store.dispose()


def _schema():
    """The app's OpenAPI schema, as the server publishes it at /openapi.json (made without starting it)."""
    app = create_app(Settings(data_dir=Path("unused")), generator=FakeGenerator())
    return schemathesis.openapi.from_dict(app.openapi()).exclude(path=LEFT_OUT)


schema = _schema()


def refusals_say_why(ctx, response, case) -> bool | None:
    """Every 4xx carries a message (FastAPI's `detail`, or OpenAI's `error.message` under /v1)."""
    if 400 <= response.status_code < 500:
        body = response.json()
        message = body.get("detail") or (body.get("error") or {}).get("message")
        assert message, f"{case.method} {case.path} → {response.status_code} without a message: {body}"
    return None


def _fuzz(case, served, headers: dict[str, str]) -> None:
    server, _ = served
    response = case.call(base_url=server.url, headers=headers)
    case.validate_response(
        response,
        checks=[
            not_a_server_error,
            status_code_conformance,
            response_schema_conformance,
            content_type_conformance,
            refusals_say_why,
        ],
    )


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=not RANDOM)
def test_no_route_fails_or_breaks_its_schema_for_an_admin(case, served):
    _fuzz(case, served, {"Authorization": f"Bearer {served[1]}"})


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=not RANDOM)
def test_no_route_fails_or_breaks_its_schema_without_a_token(case, served):
    _fuzz(case, served, {})
