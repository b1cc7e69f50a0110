"""Live events between customers' sockets and staff consoles (human handoff): a small pub/sub.

Topics: `conversation:<id>` (the customer's socket and the consoles watching it) and `staff` (the inbox
changed). Each event is a JSON-ready dict with a `type`. Subscribers get their own queue; a subscriber
that does not keep up loses its oldest events rather than slowing the others (consoles refetch the inbox
on any `inbox` event; chat messages are also in the store).

Across replicas: with a PostgreSQL store every event is also sent with `pg_notify` on `CHANNEL` and each
server delivers the events of the others (it has delivered its own already). PostgreSQL limits a
notification to 8,000 bytes: an event with a longer text travels without it (`text_ref`: the message
id) and the receiving server reads the text from the store. PostgreSQL rather than Redis pub/sub: the
store is already the one service every replica shares, NOTIFY is already how they follow promotions,
and a notification sent after commit can never announce a message that is not stored. On SQLite (one
server) events stay in process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from typing import Any

from sqlalchemy import text as sql

from feedback.db import Store, notifications
from feedback.models import Message

log = logging.getLogger(__name__)
CHANNEL = "supportloop_live"
MAX_PAYLOAD = 7900  # bytes; PostgreSQL's limit is 8000
QUEUE = 256  # events a subscriber may fall behind by


def conversation_topic(conversation_id: str) -> str:
    return f"conversation:{conversation_id}"


STAFF_TOPIC = "staff"
PRESENCE_TOPIC = "presence"  # between replicas only: how many consoles each has connected
PRESENCE_SECONDS = 15.0  # each replica repeats its count this often; one not heard of for 3× is gone


class Subscription:
    def __init__(self, bus: LiveBus, topics: set[str]) -> None:
        self.bus, self.topics = bus, topics
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE)

    def add(self, topic: str) -> None:
        self.topics.add(topic)
        self.bus._subscribers[topic].add(self)

    def discard(self, topic: str) -> None:
        self.topics.discard(topic)
        self.bus._subscribers[topic].discard(self)

    def put(self, event: dict[str, Any]) -> None:
        if self.queue.full():
            self.queue.get_nowait()
        self.queue.put_nowait(event)

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        while True:
            yield await self.queue.get()


class LiveBus:
    """`publish(topic, event)` from the event loop or any thread; `subscribe(topics)` on the loop."""

    def __init__(self, store: Store | None = None) -> None:
        self.store = store
        self.origin = uuid.uuid4().hex  # this server, so that it skips its own notifications
        self._subscribers: defaultdict[str, set[Subscription]] = defaultdict(set)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listener: asyncio.Task[None] | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.consoles = 0  # staff consoles connected here
        self._remote_consoles: dict[str, tuple[int, float]] = {}  # other replicas: (count, when heard)

    @property
    def shared(self) -> bool:
        return self.store is not None and self.store.engine.dialect.name == "postgresql"

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self.shared:
            self._listener = asyncio.create_task(self._listen())
            self._heartbeat = asyncio.create_task(self._announce_presence())

    async def stop(self) -> None:
        for task in (self._listener, self._heartbeat):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    # ---- which staff consoles are connected, on every replica -------------------------------------

    async def console_connected(self, change: int) -> None:
        """A console socket opened (+1) or closed (-1) here; the other replicas hear of it."""
        self.consoles += change
        if self.shared:
            await asyncio.to_thread(self._announce)

    def _announce(self) -> None:
        self._notify(PRESENCE_TOPIC, {"type": "presence", "count": self.consoles})

    def consoles_online(self) -> int:
        fresh = time.monotonic() - 3 * PRESENCE_SECONDS
        return self.consoles + sum(count for count, heard in self._remote_consoles.values() if heard >= fresh)

    async def _announce_presence(self) -> None:
        while True:
            await asyncio.to_thread(self._announce)
            await asyncio.sleep(PRESENCE_SECONDS)

    def _heard_presence(self, origin: str, count: int) -> None:
        new = origin not in self._remote_consoles
        self._remote_consoles[origin] = (count, time.monotonic())
        if new and self.consoles and self._loop is not None:  # a replica that just started: tell it ours now
            task = self._loop.create_task(asyncio.to_thread(self._announce))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    @contextlib.contextmanager
    def subscribe(self, *topics: str) -> Iterator[Subscription]:
        subscription = Subscription(self, set())
        for topic in topics:
            subscription.add(topic)
        try:
            yield subscription
        finally:
            for topic in list(subscription.topics):
                subscription.discard(topic)

    def publish(self, topic: str, event: dict[str, Any]) -> None:
        """Deliver here at once, and to the other replicas (blocking: call it off the loop, or through
        `publish_async`)."""
        self._deliver_threadsafe(topic, event)
        if self.shared:
            self._notify(topic, event)

    async def publish_async(self, topic: str, event: dict[str, Any]) -> None:
        self._deliver(topic, event)
        if self.shared:
            await asyncio.to_thread(self._notify, topic, event)

    def _deliver_threadsafe(self, topic: str, event: dict[str, Any]) -> None:
        loop = self._loop
        if loop is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._deliver(topic, event)
        else:
            loop.call_soon_threadsafe(self._deliver, topic, event)

    def _deliver(self, topic: str, event: dict[str, Any]) -> None:
        for subscription in list(self._subscribers.get(topic, ())):
            subscription.put(event)

    def _notify(self, topic: str, event: dict[str, Any]) -> None:
        payload = json.dumps({"origin": self.origin, "topic": topic, "event": event}, ensure_ascii=False)
        if len(payload.encode()) > MAX_PAYLOAD:
            short = {k: v for k, v in event.items() if k != "text"} | {"text_ref": event["message_id"]}
            payload = json.dumps({"origin": self.origin, "topic": topic, "event": short})
        assert self.store is not None
        try:
            with self.store.session() as session:
                session.execute(sql("SELECT pg_notify(:channel, :payload)"), {"channel": CHANNEL, "payload": payload})
                session.commit()
        except Exception:  # the other replicas miss it; the store has the messages
            log.warning("live event not sent to the other servers", exc_info=True)

    async def _listen(self) -> None:
        assert self.store is not None
        url = self.store.engine.url.render_as_string(hide_password=False)
        async with contextlib.aclosing(notifications(url, CHANNEL, "live events from other servers")) as notes:
            async for payload in notes:
                if payload is not None:
                    await self._received(payload)

    async def _received(self, payload: str) -> None:
        try:
            note = json.loads(payload)
            if note["origin"] == self.origin:
                return
            event = note["event"]
            if note["topic"] == PRESENCE_TOPIC:
                return self._heard_presence(note["origin"], int(event["count"]))
            if "text_ref" in event:
                event["text"] = await asyncio.to_thread(self._text_of, event.pop("text_ref"))
            self._deliver(note["topic"], event)
        except Exception:
            log.warning("a live event from another server could not be read", exc_info=True)

    def _text_of(self, message_id: str) -> str:
        assert self.store is not None
        with self.store.session() as session:
            message = session.get(Message, message_id)
            return message.text if message else ""
