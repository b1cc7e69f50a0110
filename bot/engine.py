"""The engine: one worker thread owns the generator; the event loop never blocks on the model.

Jobs (model load, generations, adapter loads) run one at a time in submission order, so an adapter
swap queued behind a streaming answer waits for it: requests already streaming finish on the version
they started with.
"""
from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bot.generator import GenerationRequest, GenerationResult, Generator


class Engine:
    def __init__(self, generator: Generator) -> None:
        self.generator = generator
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="supportloop-model")
        self.load_error: str | None = None

    async def _run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._worker, fn, *args)

    async def load(self) -> None:
        try:
            await self._run(self.generator.load)
        except Exception as exc:  # noqa: BLE001 — reported by /readyz, the process keeps serving
            self.load_error = str(exc)
            raise

    async def load_adapter(self, version: str, path: Path) -> None:
        await self._run(self.generator.load_adapter, version, path)

    async def unload_adapter(self, version: str) -> None:
        await self._run(self.generator.unload_adapter, version)

    async def stream(self, request: GenerationRequest) -> AsyncIterator[str | GenerationResult]:
        """Yields text deltas, then the `GenerationResult`. Leaving early cancels the generation."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        cancel = threading.Event()

        def emit(text: str) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, text)

        def job() -> GenerationResult:
            return self.generator.generate(request, emit, cancel)

        future = asyncio.ensure_future(self._run(job))
        future.add_done_callback(lambda _f: queue.put_nowait(None))
        try:
            while (item := await queue.get()) is not None:
                yield item
            yield future.result()
        finally:
            cancel.set()

    def close(self) -> None:
        self._worker.shutdown(wait=False, cancel_futures=True)
