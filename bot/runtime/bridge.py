"""The async side of generation: the event loop submits requests to the generator (which batches them
in its own thread) and receives text deltas through a queue; it never blocks on the model."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TypeAlias

from bot.runtime.generator import Generator
from bot.runtime.types import GenerationRequest, GenerationResult

_Item: TypeAlias = str | None  # a text delta, or None once the request is done


class _Outbox:
    """Hands items from the generator's thread to the event loop with at most one loop wake-up in
    flight: the batch emits a token for every request each step, and one wake-up per step (instead of
    one per token) keeps the event loop from competing with the model for the GIL."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop, self.lock, self.scheduled = loop, threading.Lock(), False
        self.items: list[tuple[asyncio.Queue[_Item], _Item]] = []

    def put(self, queue: asyncio.Queue[_Item], item: _Item) -> None:
        with self.lock:
            self.items.append((queue, item))
            if self.scheduled:
                return
            self.scheduled = True
        self.loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        with self.lock:
            items, self.items, self.scheduled = self.items, [], False
        for queue, item in items:
            queue.put_nowait(item)


class GenerationBridge:
    def __init__(self, generator: Generator) -> None:
        self.generator = generator
        self.load_error: str | None = None
        self._outbox: _Outbox | None = None

    @property
    def failure(self) -> str | None:
        """Why the model cannot serve: it failed to load, or its worker process stopped."""
        return self.load_error or getattr(self.generator, "failure", None)

    async def load(self) -> None:
        try:
            await asyncio.to_thread(self.generator.load)
        except Exception as exc:
            self.load_error = str(exc)
            raise

    async def load_adapter(self, version: str, path: Path) -> None:
        await asyncio.to_thread(self.generator.load_adapter, version, path)

    async def unload_adapter(self, version: str) -> None:
        await asyncio.to_thread(self.generator.unload_adapter, version)

    async def stream(self, request: GenerationRequest) -> AsyncIterator[str | GenerationResult]:
        """Yields text deltas, then the `GenerationResult`. Leaving early cancels the request, which
        frees its batch slot at the next step. Raises `bot.runtime.hf_generator.Busy` when the queue is full."""
        if self._outbox is None:
            self._outbox = _Outbox(asyncio.get_running_loop())
        queue: asyncio.Queue[_Item] = asyncio.Queue()
        outbox, cancel = self._outbox, threading.Event()
        future = self.generator.submit(request, lambda text: outbox.put(queue, text), cancel)
        future.add_done_callback(lambda _f: outbox.put(queue, None))
        try:
            while (item := await queue.get()) is not None:
                yield item
            yield future.result()
        finally:
            cancel.set()

    def close(self) -> None:
        self.generator.close()
