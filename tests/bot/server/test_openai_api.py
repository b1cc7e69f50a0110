"""The OpenAI-compatible API, driven by the official `openai` client over a real port."""

from __future__ import annotations

import httpx
import openai
import pytest

from bot.server.app import create_app
from tests.support.common import wait_until
from tests.support.fakes import FakeGenerator
from tests.support.services import LiveServer


@pytest.fixture
def served(settings, store):
    fake = FakeGenerator()
    with LiveServer(create_app(settings, generator=fake, store=store)) as server:
        wait_until(lambda: httpx.get(server.url + "/readyz").status_code == 200)
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
        yield client, fake, server


def test_non_streaming_completion(served):
    client, fake, server = served
    fake.enqueue("Check-in is from 3pm.")
    response = client.chat.completions.create(
        model="supportloop",
        max_tokens=40,
        temperature=0.3,
        top_p=0.9,
        stop=["\n\n"],
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Check-in?"}],
    )
    choice = response.choices[0]
    assert choice.message.content == "Check-in is from 3pm." and choice.finish_reason == "stop"
    assert response.model == "base" and response.usage.completion_tokens == 4
    ids = response.model_extra["supportloop"]
    assert response.id == f"chatcmpl-{ids['message_id']}"
    request = fake.requests[-1]
    assert (request.max_new_tokens, request.temperature, request.top_p, request.stop) == (40, 0.3, 0.9, ("\n\n",))
    assert request.messages[0] == {"role": "system", "content": "Be brief."}
    mine = {"X-Session-Token": ids["session_token"]}  # the new session's secret, for votes and the transcript
    vote = httpx.post(f"{server.url}/api/messages/{ids['message_id']}/feedback", json={"thumb": "up"}, headers=mine)
    assert vote.status_code == 200
    assert (
        httpx.post(f"{server.url}/api/messages/{ids['message_id']}/feedback", json={"thumb": "up"}).status_code == 401
    )
    transcript = httpx.get(f"{server.url}/api/sessions/{ids['session_id']}", headers=mine).json()
    assert [m["text"] for m in transcript["messages"]] == ["Check-in?", "Check-in is from 3pm."]


def test_streaming_completion(served):
    client, fake, _ = served
    fake.enqueue("Yes, pets are welcome here.")
    stream = client.chat.completions.create(
        model="base",
        stream=True,
        stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "Pets?"}],
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Yes, pets are welcome here."
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].choices[0].finish_reason == "stop"
    assert finals[0].model_extra["supportloop"]["message_id"]
    assert chunks[-1].usage.completion_tokens == 5
    assert len({c.id for c in chunks}) == 1


def test_length_finish_reason(served):
    client, fake, _ = served
    fake.enqueue("one two three four five")
    response = client.chat.completions.create(
        model="supportloop", max_tokens=2, messages=[{"role": "user", "content": "count"}]
    )
    assert response.choices[0].finish_reason == "length" and response.choices[0].message.content == "one two"


def test_models_list_and_unknown_model(served):
    client, _, _ = served
    assert [m.id for m in client.models.list()] == ["supportloop", "base"]
    with pytest.raises(openai.NotFoundError) as raised:
        client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}])
    assert raised.value.status_code == 404 and raised.value.code == "model_not_found"
    assert "gpt-4" in raised.value.body["message"]


@pytest.mark.parametrize(
    "kwargs, param",
    [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "user", "content": "hi"}], "n": 2}, "n"),
        ({"messages": [{"role": "user", "content": "hi"}], "temperature": 5}, "temperature"),
        ({"messages": [{"role": "assistant", "content": "hi"}]}, "messages"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages"),
        ({"messages": [{"role": "user", "content": "x" * 201}]}, "messages"),
        ({"messages": [{"role": "user", "content": "   "}]}, "messages"),
    ],
)
def test_bad_requests_get_openai_shaped_400(served, kwargs, param):
    client, _, _ = served
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model="supportloop", **kwargs)
    error = raised.value.body
    assert raised.value.status_code == 400 and error["type"] == "invalid_request_error"
    assert error["message"] and (error["param"] or "").startswith(param)


def test_busy_is_a_rate_limit_error(settings, store):
    with LiveServer(create_app(settings, generator=FakeGenerator(max_pending=0), store=store)) as server:
        wait_until(lambda: httpx.get(server.url + "/readyz").status_code == 200)
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(model="supportloop", messages=[{"role": "user", "content": "hi"}])
