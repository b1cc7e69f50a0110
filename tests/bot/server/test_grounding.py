"""Grounded answers through the web app, with the fake generator and the deterministic test embedder
injected through `create_app`: the prompt the model gets, the `sources` clients get (done frame, REST,
OpenAI, transcript), what the store keeps, a correction used by the very next question, and retrieval
switched off."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from sqlmodel import select

from bot.server.app import create_app
from bot.server.grounding import GROUNDED
from bot.server.settings import DEFAULT_SYSTEM_PROMPT
from feedback import repo
from feedback.models import GroundingSource, Message, Role, StaffRole
from tests.support.common import wait_until
from tests.support.grounding import add_page

PAGE = """# A and B Guest House

## Check-in

Check-in time at A and B Guest House is from 3:30pm to 9:00pm.
"""
QUESTION = "What time is check-in at A and B Guest House?"


@pytest.fixture
def grounded(settings, fake, any_store, embedder):
    def start(**update):
        changed = settings.model_copy(update={"kb_min_score": 0.3, "memory_min_score": 0.6, **update})
        client = TestClient(create_app(changed, generator=fake, store=any_store, embedder=embedder))
        client.__enter__()
        wait_until(lambda: client.get("/readyz").status_code == 200)
        return client

    clients = []
    yield lambda **update: clients.append(start(**update)) or clients[-1]
    for client in clients:
        client.__exit__(None, None, None)


def settings_prompt(client) -> str:
    return client.app.state.settings.system_prompt


def _ask(client, text: str) -> dict:
    with client.websocket_connect("/ws/chat") as ws:
        ws.send_text(json.dumps({"type": "user_message", "text": text}))
        text, secret = "", None
        while (frame := ws.receive_json())["type"] not in ("done", "error"):
            text += frame.get("text", "") if frame["type"] == "token" else ""
            secret = frame["session_token"] if frame["type"] == "session" else secret
    return {**frame, "text": text, "session_token": secret}


FAQ_PAGE = """# A and B Guest House

## Can I bring my dog to A and B Guest House?

Dogs are welcome at A and B Guest House for 10 GBP a night.
"""


def test_kb_passages_ground_the_prompt_and_are_cited(grounded, fake, any_store, embedder, tmp_path):
    add_page(any_store, embedder, tmp_path, "a-and-b.md", PAGE, url="https://help.example.com/a-and-b")
    client = grounded()
    fake.enqueue("From 3:30pm to 9:00pm.")
    done = _ask(client, QUESTION)
    assert done["sources"] == [
        {"title": "A and B Guest House › Check-in", "url": "https://help.example.com/a-and-b", "kind": "kb"}
    ]
    assert done["text"] == "From 3:30pm to 9:00pm."  # the model answered, with the facts in the customer's turn
    system, turn = fake.requests[-1].messages[0], fake.requests[-1].messages[-1]
    assert system == {"role": "system", "content": settings_prompt(client)}  # the system prompt is unchanged
    assert turn == {
        "role": "user",
        "content": GROUNDED.format(
            facts="Check-in time at A and B Guest House is from 3:30pm to 9:00pm.",
            question=QUESTION,
        ),
    }
    with any_store.session() as s:
        answer = s.get(Message, done["message_id"])
        assert answer.grounding == turn["content"]  # what training rounds will use as the customer's turn
        user = s.exec(select(Message).where(Message.role == Role.user)).one()
        assert user.text == QUESTION  # the customer's words are stored as written
        rows = s.exec(select(GroundingSource)).all()
        assert [(r.rank, r.kind.value, r.url) for r in rows] == [(0, "kb", "https://help.example.com/a-and-b")]
        session_id = answer.conversation_id
    transcript = client.get(f"/api/sessions/{session_id}", headers={"X-Session-Token": done["session_token"]}).json()
    assert transcript["messages"][1]["sources"] == done["sources"] and transcript["messages"][0]["sources"] == []


def test_a_close_faq_passage_is_quoted_word_for_word_without_the_model(grounded, fake, any_store, embedder, tmp_path):
    add_page(any_store, embedder, tmp_path, "a-and-b.md", FAQ_PAGE)
    client = grounded()
    done = _ask(client, "Can I bring my dog to A and B Guest House?")
    assert done["text"] == "Dogs are welcome at A and B Guest House for 10 GBP a night."
    assert done["sources"][0]["title"] == "A and B Guest House › Can I bring my dog to A and B Guest House?"
    assert fake.requests == []  # quoted: the model was not asked
    with any_store.session() as s:
        stored = s.get(Message, done["message_id"])
        assert stored.text == done["text"] and stored.grounding is None and stored.adapter_version == "base"


def test_a_faq_passage_below_the_quote_score_goes_to_the_model(grounded, fake, any_store, embedder, tmp_path):
    add_page(any_store, embedder, tmp_path, "a-and-b.md", FAQ_PAGE)
    client = grounded(quote_min_score=1.5)  # never quote
    fake.enqueue("Yes, for 10 GBP a night.")
    done = _ask(client, "Can I bring my dog to A and B Guest House?")
    assert done["text"] == "Yes, for 10 GBP a night." and len(fake.requests) == 1
    assert "Dogs are welcome at A and B Guest House for 10 GBP a night." in fake.requests[0].messages[-1]["content"]


def test_a_question_the_kb_does_not_cover_gets_the_no_answer_text(grounded, fake, any_store, embedder, tmp_path):
    add_page(any_store, embedder, tmp_path, "a-and-b.md", PAGE)
    client = grounded(no_answer_text="No idea, sorry. Shall I get a person?")
    done = _ask(client, "Do you sell gift vouchers online?")
    assert done["sources"] == [] and done["text"] == "No idea, sorry. Shall I get a person?"
    assert fake.requests == []  # the model cannot invent a policy


def test_with_an_empty_no_answer_text_the_model_answers_ungrounded(grounded, fake, any_store, embedder, tmp_path):
    add_page(any_store, embedder, tmp_path, "a-and-b.md", PAGE)
    client = grounded(no_answer_text="")
    fake.enqueue("We do not sell vouchers.")
    done = _ask(client, "Do you sell gift vouchers online?")
    assert done["text"] == "We do not sell vouchers." and done["sources"] == []
    assert fake.requests[-1].messages[-1] == {"role": "user", "content": "Do you sell gift vouchers online?"}


def test_without_a_kb_or_corrections_the_prompt_is_unchanged(grounded, fake):
    done = _ask(grounded(), QUESTION)
    assert done["sources"] == [] and fake.requests[-1].messages[-1] == {"role": "user", "content": QUESTION}
    assert fake.requests[-1].messages[0]["content"] == DEFAULT_SYSTEM_PROMPT


def test_a_correction_approved_in_the_console_api_answers_the_very_next_question(grounded, fake, any_store):
    client = grounded()
    with any_store.session() as s:
        _, token = repo.create_staff(s, name="ada", role=StaffRole.admin)
    question = "Can I bring my dog to the Lensfield Hotel?"
    first = _ask(client, question)
    assert first["sources"] == [] and len(fake.requests) == 1
    approved = client.post(
        f"/api/messages/{first['message_id']}/corrections",
        json={"text": "No, the Lensfield Hotel does not allow pets.", "approve": True},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert approved.status_code == 201
    second = _ask(client, "can I bring my dog to the lensfield hotel?")
    assert second["sources"] == [{"title": "Answer from our support team", "url": "", "kind": "correction"}]
    assert second["text"] == "No, the Lensfield Hotel does not allow pets."  # the approved answer, at once
    assert len(fake.requests) == 1  # no model call, no training round


def test_kb_off_and_memory_off_leave_the_model_alone(grounded, fake, any_store, embedder, tmp_path):
    add_page(any_store, embedder, tmp_path, "a-and-b.md", PAGE)
    done = _ask(grounded(kb=False, memory=False), QUESTION)
    assert done["sources"] == [] and fake.requests[-1].messages[0]["content"] == DEFAULT_SYSTEM_PROMPT
    assert embedder.calls == 1  # only add_page embedded anything
