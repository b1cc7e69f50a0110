"""The async side of generation: the event loop submits requests to the generator (which batches them
in its own thread) and receives text deltas through a queue; it never blocks on the model."""
from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path

from bot.generator import GenerationRequest, GenerationResult, Generator


class Engine:
    def __init__(self, generator: Generator) -> None:
        self.generator = generator
        self.load_error: str | None = None

    async def load(self) -> None:
        try:
            await asyncio.to_thread(self.generator.load)
        except Exception as exc:  # noqa: BLE001 — reported by /readyz, the process keeps serving
            self.load_error = str(exc)
            raise

    async def load_adapter(self, version: str, path: Path) -> None:
        await asyncio.to_thread(self.generator.load_adapter, version, path)

    async def unload_adapter(self, version: str) -> None:
        await asyncio.to_thread(self.generator.unload_adapter, version)

    async def stream(self, request: GenerationRequest) -> AsyncIterator[str | GenerationResult]:
        """Yields text deltas, then the `GenerationResult`. Leaving early cancels the request, which
        frees its batch slot at the next step. Raises `bot.generator.Busy` when the queue is full."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        cancel = threading.Event()

        def emit(text: str) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, text)

        future = self.generator.submit(request, emit, cancel)
        future.add_done_callback(lambda _f: loop.call_soon_threadsafe(queue.put_nowait, None))
        try:
            while (item := await queue.get()) is not None:
                yield item
            yield future.result()
        finally:
            cancel.set()

    def close(self) -> None:
        self.generator.close()
