"""Live human handoff under load: 20 customers (WebSocket, protocol 2) each ask the bot a question, then
ask for a person; 4 agents work them through what the console's Inbox uses (its `/ws/staff` socket for
the inbox and the conversation's live events, the staff API to take over, write and hand back). Each
conversation is 5 rounds of agent message → customer reply, then handed back. Run on one server (SQLite)
and on two servers sharing one PostgreSQL store (customers on the first, agents on the second: every
live event crosses replicas by NOTIFY). Real servers with the real SmolLM2, on loopback.

Measures the time from the agent pressing Enter (the staff API call starts) to the text arriving on the
customer's socket, and from the customer's message to the agent's console; checks that every message
arrived once, in order, on both sides and in the store. Prints JSON and a one-line summary.

    .venv/bin/python bench/handoff.py [--customers 20] [--agents 4] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import live
import websockets

TARGET_MS = 200


@dataclass
class Conversation:
    number: int = 0  # the customer's
    session_id: str = ""
    secret: str = ""  # the session's, for the customer's own calls
    handoff_id: int = 0
    sent_by_agent: list[str] = field(default_factory=list)
    seen_by_customer: list[str] = field(default_factory=list)
    sent_by_customer: list[str] = field(default_factory=list)
    seen_by_agent: list[str] = field(default_factory=list)
    agent_to_customer_ms: list[float] = field(default_factory=list)
    customer_to_agent_ms: list[float] = field(default_factory=list)

    @property
    def headers(self) -> dict[str, str]:
        return {"X-Session-Token": self.secret}


class Customer:
    """A widget's socket: asks the bot, asks for a person, answers every agent message."""

    def __init__(self, url: str, number: int) -> None:
        self.url, self.number, self.talk = url, number, Conversation(number)

    async def run(self, ready: asyncio.Event, sent_at: dict[str, float], rounds: int) -> None:
        async with websockets.connect(self.url.replace("http", "ws") + "/ws/chat", max_size=None) as ws:
            await ws.send(json.dumps({"type": "hello", "protocol": 2}))
            session = json.loads(await ws.recv())
            self.talk.session_id, self.talk.secret = session["session_id"], session["session_token"]
            await ws.send(json.dumps({"type": "user_message", "text": f"Customer {self.number}: can I bring a dog?"}))
            while json.loads(await ws.recv())["type"] not in ("done", "error"):
                pass
            async with httpx.AsyncClient(timeout=30) as client:
                asked = await client.post(
                    f"{self.url}/api/sessions/{self.talk.session_id}/handoff", json={}, headers=self.talk.headers
                )
                self.talk.handoff_id = asked.json()["id"]
            ready.set()
            await self._converse(ws, sent_at, rounds)

    async def _converse(self, ws, sent_at: dict[str, float], rounds: int) -> None:
        replied = 0
        async for raw in ws:
            frame, now = json.loads(raw), time.perf_counter()
            if frame["type"] == "agent_message":
                self.talk.seen_by_customer.append(frame["text"])
                if frame["text"] in sent_at:
                    self.talk.agent_to_customer_ms.append((now - sent_at[frame["text"]]) * 1000)
                if replied < rounds:
                    replied += 1
                    text = f"customer {self.number} reply {replied}"
                    self.talk.sent_by_customer.append(text)
                    sent_at[text] = time.perf_counter()
                    await ws.send(json.dumps({"type": "user_message", "text": text}))
            elif frame["type"] == "agent_left":
                return


class Agent:
    """A console: takes the longest-waiting conversation, chats `rounds` rounds, hands it back, repeats."""

    def __init__(self, url: str, token: str, conversations: dict[str, Conversation]) -> None:
        self.url, self.token, self.conversations = url, token, conversations
        self.headers = {"Authorization": f"Bearer {token}"}
        self.handled = 0

    async def run(self, sent_at: dict[str, float], rounds: int, remaining: list[int]) -> None:
        socket_url = self.url.replace("http", "ws") + "/ws/staff"
        async with (
            websockets.connect(socket_url, additional_headers=self.headers, max_size=None) as ws,
            httpx.AsyncClient(base_url=self.url, headers=self.headers, timeout=30) as client,
        ):
            events: asyncio.Queue[dict] = asyncio.Queue()
            reader = asyncio.create_task(_read(ws, events, sent_at, self.conversations))
            try:
                while remaining[0] > 0:
                    if not await self._take_one(client, ws, events, sent_at, rounds, remaining):
                        await asyncio.sleep(0.05)
            finally:
                reader.cancel()

    async def _take_one(self, client, ws, events, sent_at, rounds, remaining) -> bool:
        waiting = [h for h in (await client.get("/api/handoffs")).json() if h["status"] == "open"]
        for handoff in waiting:
            if (await client.post(f"/api/handoffs/{handoff['id']}/take")).status_code != 200:
                continue  # another agent was quicker
            remaining[0] -= 1
            talk = self.conversations[handoff["session_id"]]
            await ws.send(json.dumps({"type": "watch", "session_id": talk.session_id}))
            await _until(events, lambda e: e["type"] == "watching")
            for n in range(1, rounds + 1):
                text = f"agent reply {n} to {talk.session_id[:8]}"
                talk.sent_by_agent.append(text)
                sent_at[text] = time.perf_counter()  # Enter
                assert (
                    await client.post(f"/api/handoffs/{handoff['id']}/messages", json={"text": text})
                ).status_code == 201
                await _until(events, lambda e, n=n, c=talk.number: e.get("text") == f"customer {c} reply {n}")
            await client.post(f"/api/handoffs/{handoff['id']}/hand-back")
            await ws.send(json.dumps({"type": "unwatch", "session_id": talk.session_id}))
            self.handled += 1
            return True
        return False


async def _read(ws, events: asyncio.Queue, sent_at: dict[str, float], conversations: dict[str, Conversation]) -> None:
    async for raw in ws:
        event, now = json.loads(raw), time.perf_counter()
        if event["type"] == "customer_message":
            talk = conversations[event["session_id"]]
            talk.seen_by_agent.append(event["text"])
            if event["text"] in sent_at:
                talk.customer_to_agent_ms.append((now - sent_at[event["text"]]) * 1000)
        await events.put(event)


async def _until(events: asyncio.Queue, test, timeout: float = 30) -> dict:
    async with asyncio.timeout(timeout):
        while not test(event := await events.get()):
            pass
    return event


async def session(customer_url: str, agent_url: str, tokens: list[str], customers: int, rounds: int) -> dict:
    sent_at: dict[str, float] = {}
    people = [Customer(customer_url, n) for n in range(customers)]
    ready = [asyncio.Event() for _ in people]
    tasks = [asyncio.create_task(c.run(r, sent_at, rounds)) for c, r in zip(people, ready, strict=True)]
    for event in ready:
        await event.wait()
    conversations = {c.talk.session_id: c.talk for c in people}
    agents, remaining = [Agent(agent_url, token, conversations) for token in tokens], [customers]
    started = time.perf_counter()
    await asyncio.gather(*(a.run(sent_at, rounds, remaining) for a in agents))
    await asyncio.gather(*tasks)
    seconds = time.perf_counter() - started
    stored = await _stored(customer_url, list(conversations.values()))
    return _report(list(conversations.values()), stored, [a.handled for a in agents], seconds)


async def _stored(url: str, talks: list[Conversation]) -> dict[str, list[tuple[str, str]]]:
    async with httpx.AsyncClient(timeout=30) as client:
        found = {}
        for talk in talks:
            messages = (await client.get(f"{url}/api/sessions/{talk.session_id}", headers=talk.headers)).json()
            found[talk.session_id] = [(m["role"], m["text"]) for m in messages["messages"]]
        return found


def _report(talks: list[Conversation], stored: dict, handled: list[int], seconds: float) -> dict:
    a2c = [ms for t in talks for ms in t.agent_to_customer_ms]
    c2a = [ms for t in talks for ms in t.customer_to_agent_ms]
    lost = sum(
        _missing(t.sent_by_agent, t.seen_by_customer) + _missing(t.sent_by_customer, t.seen_by_agent) for t in talks
    )
    duplicated = sum(
        len(t.seen_by_customer) - len(set(t.seen_by_customer)) + len(t.seen_by_agent) - len(set(t.seen_by_agent))
        for t in talks
    )
    out_of_order = sum(t.seen_by_customer != t.sent_by_agent or t.seen_by_agent != t.sent_by_customer for t in talks)
    unstored = sum(_store_problem(t, stored[t.session_id]) for t in talks)
    return {
        "conversations": len(talks),
        "agents_handled": handled,
        "messages": len(a2c) + len(c2a),
        "seconds": round(seconds, 1),
        "agent_to_customer_ms": _percentiles(a2c),
        "customer_to_agent_ms": _percentiles(c2a),
        "lost": lost,
        "duplicated": duplicated,
        "conversations_out_of_order": out_of_order,
        "conversations_not_stored_in_order": unstored,
    }


def _missing(sent: list[str], seen: list[str]) -> int:
    return len(set(sent) - set(seen))


def _store_problem(talk: Conversation, stored: list[tuple[str, str]]) -> bool:
    live_turns = [(r, t) for r, t in stored[2:] if r in ("user", "agent")]
    expected = [turn for pair in zip(talk.sent_by_agent, talk.sent_by_customer, strict=True) for turn in
                (("agent", pair[0]), ("user", pair[1]))]  # fmt: skip
    return live_turns != expected


def _percentiles(values: list[float]) -> dict:
    if len(values) < 2:
        return {"n": len(values)}
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {"n": len(values), "p50": round(cuts[49], 1), "p95": round(cuts[94], 1), "max": round(max(values), 1)}


def _env(data_dir: Path, **extra: str) -> dict[str, str]:
    return {"SUPPORTLOOP_DATA_DIR": str(data_dir), "SUPPORTLOOP_MAX_NEW_TOKENS": "24",
            "SUPPORTLOOP_RATE_LIMIT": "100000/minute", "SUPPORTLOOP_PREFILL_PROCESS": "false", **extra}  # fmt: skip


def _tokens(env: dict[str, str], agents: int) -> list[str]:
    return [live.staff_token(env, f"agent{n}", "agent") for n in range(agents)]


def one_server(args) -> dict:
    env = _env(Path(tempfile.mkdtemp(prefix="supportloop-handoff-")))
    tokens = _tokens(env, args.agents)
    server, url = live.start_server(env, "--no-access-log")
    try:
        return asyncio.run(session(url, url, tokens, args.customers, args.rounds))
    finally:
        server.terminate()
        server.wait()


def two_servers(args) -> dict:
    database = live.postgres_database(prefix="supportloop_bench_handoff")
    env = _env(Path(tempfile.mkdtemp(prefix="supportloop-handoff-pg-")), SUPPORTLOOP_DATABASE_URL=database)
    servers = []
    try:
        tokens = _tokens(env, args.agents)
        servers = [live.start_server(env, "--no-access-log") for _ in range(2)]
        (_, first), (_, second) = servers
        return asyncio.run(session(first, second, tokens, args.customers, args.rounds))
    finally:
        for server, _ in servers:
            server.terminate()
            server.wait()
        live.drop_database(database)


def summary(result: dict) -> str:
    def line(name: str, r: dict) -> str:
        a2c, c2a = r["agent_to_customer_ms"], r["customer_to_agent_ms"]
        return (f"{name}: agent→customer p50 {a2c['p50']} / p95 {a2c['p95']} ms, customer→agent p50 {c2a['p50']} / "
                f"p95 {c2a['p95']} ms, {r['messages']} messages, lost {r['lost']}, duplicated {r['duplicated']}, "
                f"out of order {r['conversations_out_of_order']}, store {r['conversations_not_stored_in_order']}")  # fmt: skip

    runs = [r for r in (result["one_server_sqlite"], result["two_servers_postgresql"])]
    met = all(r["agent_to_customer_ms"]["p95"] <= TARGET_MS and not (r["lost"] or r["duplicated"]
              or r["conversations_out_of_order"] or r["conversations_not_stored_in_order"]) for r in runs)  # fmt: skip
    return (
        f"handoff: {line('one server', runs[0])}; {line('two replicas on PostgreSQL', runs[1])}; "
        f"target p95 ≤ {TARGET_MS} ms and nothing lost: {'met' if met else 'NOT met'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=20)
    parser.add_argument("--agents", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    result = {"customers": args.customers, "agents": args.agents, "rounds": args.rounds,
              "one_server_sqlite": one_server(args), "two_servers_postgresql": two_servers(args)}  # fmt: skip
    print(json.dumps(result, indent=2))
    print(summary(result))


if __name__ == "__main__":
    main()
