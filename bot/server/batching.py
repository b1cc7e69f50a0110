"""Micro-batching of blocking work from the event loop: items submitted while a batch runs go together in
the next one. Retrieval uses it so that 16 questions arriving at once cost one pass through the embedder
(about 60 ms on 2 cores) instead of 16 passes one after another (about 15 ms each, more while the model
runs)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Batched(Generic[T, R]):
    """`await batched(item)`: `fn(items)` runs in a worker thread, one batch at a time, at most
    `max_batch` items each; every caller gets its own result (or the batch's exception)."""

    def __init__(self, fn: Callable[[list[T]], Sequence[R]], max_batch: int = 64) -> None:
        self.fn, self.max_batch = fn, max_batch
        self._waiting: list[tuple[T, asyncio.Future[R]]] = []
        self._drainer: asyncio.Task[None] | None = None

    async def __call__(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        if self._drainer is None:
            self._drainer = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting[: self.max_batch], self._waiting[self.max_batch :]
                try:
                    results = await asyncio.to_thread(self.fn, [item for item, _ in batch])
                except Exception as exc:  # every caller of the batch gets it
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():  # a caller that went away has a cancelled future
                        future.set_result(result)
        finally:
            self._drainer = None
