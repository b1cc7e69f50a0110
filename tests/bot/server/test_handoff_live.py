"""Live human handoff over real sockets: a customer's WebSocket and a staff console's (`/ws/staff`) on a
real port, staff REST calls, on a real SQLite file and on real PostgreSQL; and two servers on one
PostgreSQL store (the customer on one, the agent on the other)."""

from __future__ import annotations

import json
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime

import httpx
import pytest
from websockets.sync.client import connect

from bot.server.app import create_app
from bot.server.availability import DAYS
from bot.server.live import MAX_PAYLOAD
from feedback import export, repo
from feedback.db import open_store
from feedback.models import StaffRole
from tests.support.common import drop_postgres, postgres_url, wait_until
from tests.support.fakes import FakeGenerator, HashEmbedder
from tests.support.services import LiveServer


@pytest.fixture
def tokens(any_store) -> dict[str, str]:
    with any_store.session() as s:
        return {name: repo.create_staff(s, name=name, role=role)[1]
                for name, role in (("ada", StaffRole.admin), ("bob", StaffRole.agent), ("cy", StaffRole.agent))}  # fmt: skip


@contextmanager
def running(settings, store, fake):
    app = create_app(settings.model_copy(update={"rate_limit": "1000/minute"}), generator=fake, store=store,
                     embedder=HashEmbedder())  # fmt: skip
    with LiveServer(app) as server:
        yield server


class Customer:
    def __init__(self, url: str, protocol: int = 2) -> None:
        self.ws = connect(url.replace("http", "ws") + "/ws/chat", open_timeout=10)
        self.ws.send(json.dumps({"type": "hello", "protocol": protocol}))
        session = self.next("session")
        self.session_id, self.headers = session["session_id"], {"X-Session-Token": session["session_token"]}

    def next(self, kind: str | None = None, timeout: float = 10) -> dict:
        frame = json.loads(self.ws.recv(timeout=timeout))
        assert kind is None or frame["type"] == kind, frame
        return frame

    def until(self, kind: str) -> dict:
        while (frame := self.next())["type"] != kind:
            pass
        return frame

    def ask(self, text: str) -> list[dict]:
        self.ws.send(json.dumps({"type": "user_message", "text": text}))
        frames = [self.next()]
        while frames[-1]["type"] not in ("done", "error", "received"):
            frames.append(self.next())
        return frames


class Console:
    def __init__(self, url: str, token: str) -> None:
        self.ws = connect(
            url.replace("http", "ws") + "/ws/staff", additional_headers={"Authorization": f"Bearer {token}"}
        )
        assert self.next()["type"] == "hello"

    def next(self, timeout: float = 10) -> dict:
        return json.loads(self.ws.recv(timeout=timeout))

    def until(self, kind: str) -> dict:
        while (frame := self.next())["type"] != kind:
            pass
        return frame

    def send(self, **frame) -> None:
        self.ws.send(json.dumps(frame))


def _secret(customer: Customer) -> dict:
    return {"session_token": customer.headers["X-Session-Token"]}


def _api(url: str, token: str, path: str, **body) -> httpx.Response:
    return httpx.post(url + path, json=body or None, headers={"Authorization": f"Bearer {token}"}, timeout=10)


def test_an_agent_takes_over_chats_live_and_hands_back_to_the_bot(settings, any_store, tokens):
    fake = FakeGenerator("The bot answers.")
    with running(settings, any_store, fake) as server:
        customer, console = Customer(server.url), Console(server.url, tokens["bob"])
        assert customer.ask("Is there parking?")[-1]["type"] == "done"
        asked = httpx.post(
            f"{server.url}/api/sessions/{customer.session_id}/handoff",
            json={"note": "a person"},
            headers=customer.headers,
        ).json()
        assert (asked["status"], asked["position"], asked["available"]) == ("open", 1, True)  # bob's console is on
        assert customer.next("handoff") == {
            "type": "handoff", "status": "waiting", "agent": None, "position": 1, "available": True, "message": None
        }  # fmt: skip
        assert console.until("inbox")["handoff_id"] == asked["id"]
        inbox = httpx.get(server.url + "/api/handoffs", headers={"Authorization": f"Bearer {tokens['bob']}"}).json()
        assert [(h["id"], h["status"], h["agent"]) for h in inbox] == [(asked["id"], "open", None)]

        taken = _api(server.url, tokens["bob"], f"/api/handoffs/{asked['id']}/take")
        assert taken.status_code == 200 and taken.json()["agent"] == "bob"
        assert customer.next("agent_joined") == {"type": "agent_joined", "name": "bob"}
        second = _api(server.url, tokens["cy"], f"/api/handoffs/{asked['id']}/take")
        assert second.status_code == 409 and "taken by bob" in second.json()["detail"]

        console.send(type="watch", session_id=customer.session_id)
        assert console.until("watching")["session_id"] == customer.session_id
        console.send(type="typing", session_id=customer.session_id)
        assert customer.next("agent_typing")["name"] == "bob"
        answered = len(fake.requests)
        frames = customer.ask("How much is it?")
        assert [f["type"] for f in frames] == ["received"]  # stored, sent to bob, no bot answer
        seen = console.until("customer_message")
        assert (seen["text"], seen["message_id"]) == ("How much is it?", frames[0]["message_id"])
        customer.ws.send(json.dumps({"type": "typing"}))
        assert console.until("customer_typing")["session_id"] == customer.session_id

        sent = _api(server.url, tokens["bob"], f"/api/handoffs/{asked['id']}/messages", text="<b>10 GBP</b> a day.")
        assert sent.status_code == 201 and sent.json()["draft_correction_id"] is not None
        message = customer.next("agent_message")
        assert message == {"type": "agent_message", "message_id": sent.json()["message_id"],
                           "text": "<b>10 GBP</b> a day.", "name": "bob"}  # fmt: skip
        assert len(fake.requests) == answered  # the bot stayed out of it
        draft = httpx.get(f"{server.url}/api/corrections", headers={"Authorization": f"Bearer {tokens['ada']}"}).json()
        assert [(c["id"], c["status"], c["origin"], c["text"]) for c in draft] == [
            (sent.json()["draft_correction_id"], "draft", "handoff", "<b>10 GBP</b> a day.")
        ]  # of the answer before the handoff, never approved by itself

        assert _api(server.url, tokens["bob"], f"/api/handoffs/{asked['id']}/hand-back").status_code == 200
        assert customer.next("agent_left") == {"type": "agent_left", "name": "bob", "reason": "handed_back"}
        assert customer.ask("Thanks! And breakfast?")[-1]["type"] == "done"  # the bot answers again
        assert len(fake.requests) == answered + 1
        transcript = httpx.get(f"{server.url}/api/sessions/{customer.session_id}", headers=customer.headers).json()[
            "messages"
        ]
        assert [(m["role"], m["author"]) for m in transcript] == [
            ("user", None), ("assistant", None), ("user", None), ("agent", "bob"), ("user", None), ("assistant", None)
        ]  # fmt: skip
        vote = httpx.post(
            f"{server.url}/api/messages/{message['message_id']}/feedback",
            json={"thumb": "up"},
            headers=customer.headers,
        )
        assert vote.status_code == 422  # a person's message cannot be voted on


def test_refusals_name_the_problem(settings, any_store, tokens):
    with running(settings, any_store, FakeGenerator()) as server:
        customer = Customer(server.url)
        customer.ask("Hello")
        asked = httpx.post(
            f"{server.url}/api/sessions/{customer.session_id}/handoff", json={}, headers=customer.headers
        ).json()
        path = f"/api/handoffs/{asked['id']}"
        assert _api(server.url, tokens["bob"], path + "/messages", text="Hi").status_code == 409  # not taken yet
        assert _api(server.url, tokens["bob"], path + "/hand-back").status_code == 409
        _api(server.url, tokens["bob"], path + "/take")
        too_long = _api(server.url, tokens["bob"], path + "/messages", text="x" * 4001)
        assert too_long.status_code == 422 and "4000" in too_long.text
        assert _api(server.url, tokens["bob"], path + "/messages", text="   ").status_code == 422
        assert _api(server.url, "wrong", path + "/take").status_code == 401
        reassigned = _api(server.url, tokens["ada"], path + "/take", reassign=True)
        assert reassigned.status_code == 200 and reassigned.json()["agent"] == "ada"
        assert _api(server.url, tokens["ada"], path + "/close").status_code == 200
        closed = _api(server.url, tokens["bob"], path + "/take")
        assert closed.status_code == 409 and "closed" in closed.json()["detail"]

        customer.ws.send(json.dumps({"type": "agent_message", "text": "I am staff", "message_id": "x", "name": "x"}))
        error = customer.until("error")
        assert error["code"] == "bad_frame" and "agent_" in error["message"]
        with connect(server.url.replace("http", "ws") + "/ws/staff") as anonymous:
            assert json.loads(anonymous.recv(timeout=10))["code"] == "unauthorized"
        console = Console(server.url, tokens["bob"])
        console.ws.send("not json")
        assert console.until("error")["code"] == "bad_frame"


def test_an_old_client_gets_the_agent_s_messages_as_answers_and_keeps_the_handoff_on_reconnect(
    settings, any_store, tokens
):
    with running(settings, any_store, FakeGenerator()) as server:
        old = Customer(server.url, protocol=1)
        old.ask("Hello")
        asked = httpx.post(f"{server.url}/api/sessions/{old.session_id}/handoff", json={}, headers=old.headers).json()
        _api(server.url, tokens["bob"], f"/api/handoffs/{asked['id']}/take")
        sent = _api(server.url, tokens["bob"], f"/api/handoffs/{asked['id']}/messages", text="Hi, Bob here.").json()
        assert old.next("token")["text"] == "Hi, Bob here."
        done = old.next("done")
        assert (done["message_id"], done["adapter_version"]) == (sent["message_id"], "human")
        old.ws.send(json.dumps({"type": "user_message", "text": "Hi Bob"}))  # v1: stored and forwarded
        wait_until(
            lambda: (
                len(httpx.get(f"{server.url}/api/sessions/{old.session_id}", headers=old.headers).json()["messages"])
                == 4
            )
        )

        again = connect(server.url.replace("http", "ws") + "/ws/chat")
        again.send(json.dumps({"type": "hello", "protocol": 2, "session_id": old.session_id, **_secret(old)}))
        assert json.loads(again.recv(timeout=10))["resumed"] is True
        assert json.loads(again.recv(timeout=10)) == {
            "type": "handoff",
            "status": "taken",
            "agent": "bob",
            "position": None,
            "available": True,
            "message": None,
        }


@pytest.fixture
def two_servers(settings, tokens_pg):
    url, tokens = tokens_pg
    with ExitStack() as stack:
        stores = [open_store(url), open_store(url)]
        for store in stores:
            stack.callback(store.dispose)
        servers = [stack.enter_context(running(settings, store, FakeGenerator())) for store in stores]
        yield servers, tokens


@pytest.fixture
def tokens_pg():
    url = postgres_url()
    store = open_store(url)
    with store.session() as s:
        tokens = {"bob": repo.create_staff(s, name="bob", role=StaffRole.agent)[1]}
    store.dispose()
    yield url, tokens
    drop_postgres(url)


def test_the_customer_and_the_agent_on_two_servers_of_one_postgresql_store(two_servers):
    (a, b), tokens = two_servers
    customer, console = Customer(a.url), Console(b.url, tokens["bob"])
    customer.ask("Hello")
    asked = httpx.post(f"{a.url}/api/sessions/{customer.session_id}/handoff", json={}, headers=customer.headers).json()
    assert console.until("inbox")["handoff_id"] == asked["id"]  # asked on A, seen on B
    assert _api(b.url, tokens["bob"], f"/api/handoffs/{asked['id']}/take").status_code == 200
    customer.next("handoff")
    assert customer.next("agent_joined")["name"] == "bob"
    console.send(type="watch", session_id=customer.session_id)
    console.until("watching")
    assert customer.ask("ping")[-1]["type"] == "received"
    assert console.until("customer_message")["text"] == "ping"  # said on A, seen on B
    long = "é" * (MAX_PAYLOAD // 2 + 100)  # too long for one notification: the text is read from the store
    for text in ("Short reply.", long[:4000]):
        sent = _api(b.url, tokens["bob"], f"/api/handoffs/{asked['id']}/messages", text=text)
        assert sent.status_code == 201
        frame = customer.until("agent_message")
        assert (frame["text"], frame["message_id"]) == (text, sent.json()["message_id"])


def test_waiting_customers_are_told_their_new_place_when_the_queue_moves(settings, any_store, tokens):
    with running(settings, any_store, FakeGenerator()) as server:
        first, second = Customer(server.url), Customer(server.url)
        asked = []
        for customer, place in ((first, 1), (second, 2)):
            customer.ask("Hello")
            asked.append(
                httpx.post(
                    f"{server.url}/api/sessions/{customer.session_id}/handoff", json={}, headers=customer.headers
                ).json()
            )
            assert customer.until("handoff")["position"] == place
        _api(server.url, tokens["bob"], f"/api/handoffs/{asked[0]['id']}/take")
        moved = second.until("handoff")
        assert (moved["status"], moved["position"], moved["available"]) == ("waiting", 1, False)  # no console is on
        assert first.until("agent_joined")["name"] == "bob"


def test_with_nobody_online_the_customer_is_told_and_can_leave_an_email(settings, any_store, tokens):
    with running(settings, any_store, FakeGenerator()) as server:
        customer = Customer(server.url)
        customer.ask("My email is jo.doe+shop@mail.example.co.uk, can someone call me?")
        asked = httpx.post(
            f"{server.url}/api/sessions/{customer.session_id}/handoff", json={}, headers=customer.headers
        ).json()
        assert (asked["status"], asked["available"]) == ("open", False)
        assert asked["message"] == "Nobody from our team is online right now."
        assert customer.until("handoff")["available"] is False
        contact = f"{server.url}/api/sessions/{customer.session_id}/contact"
        refused = httpx.post(contact, json={"email": "not an email"}, headers=customer.headers)
        assert refused.status_code == 422 and "email" in refused.text
        left = httpx.post(contact, json={"email": "jo.doe+shop@mail.example.co.uk"}, headers=customer.headers)
        assert left.status_code == 201 and left.json() == {
            "handoff_id": asked["id"],
            "email": "jo.doe+shop@mail.example.co.uk",
        }
        inbox = httpx.get(server.url + "/api/handoffs", headers={"Authorization": f"Bearer {tokens['bob']}"}).json()
        assert [(h["id"], h["contact_email"]) for h in inbox] == [(asked["id"], "jo.doe+shop@mail.example.co.uk")]
        assert httpx.get(server.url + "/api/handoff/availability").json()["available"] is False
        Console(server.url, tokens["bob"])  # a console comes online
        wait_until(
            lambda: httpx.get(server.url + "/api/handoff/availability").json() == {"available": True, "message": None}
        )
    with any_store.session() as s:  # what training could see of it: nothing of the email
        answer = [m for m in repo.list_messages(s, conversation_id=customer.session_id) if m.role.value == "assistant"][
            0
        ]
        admin = next(m for m in repo.list_staff(s) if m.name == "ada")
        repo.add_correction(s, message_id=answer.id, actor=admin, text="We will call you back.", approve=True)
        records = json.dumps(export.correction_records(s))
    assert "We will call you back." in records and "jo.doe" not in records and "mail.example" not in records


def test_outside_opening_hours_the_customer_is_told_when_people_are_there(settings, any_store, tokens):
    other = DAYS[(datetime.now(UTC).weekday() + 3) % 7]  # not today, nor tomorrow
    hours = settings.model_copy(update={"handoff_hours": f"{other} 09:00-17:00"})
    with running(hours, any_store, FakeGenerator()) as server:
        Console(server.url, tokens["bob"])  # online, but out of hours
        customer = Customer(server.url)
        customer.ask("Hello")
        asked = httpx.post(
            f"{server.url}/api/sessions/{customer.session_id}/handoff", json={}, headers=customer.headers
        ).json()
        assert asked["available"] is False and asked["message"] == f"Our team is available {other} 09:00-17:00 (UTC)."


def test_a_console_on_one_replica_makes_people_available_on_the_other(two_servers):
    (a, b), tokens = two_servers
    assert httpx.get(a.url + "/api/handoff/availability").json()["available"] is False
    Console(b.url, tokens["bob"])
    wait_until(lambda: httpx.get(a.url + "/api/handoff/availability").json()["available"] is True)
