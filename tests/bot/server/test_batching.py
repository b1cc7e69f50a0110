"""Micro-batching from the event loop: items that arrive while a batch runs go together in the next one;
each caller gets its own result; a failure reaches every caller of its batch and not the next batch."""

from __future__ import annotations

import asyncio
import threading

import pytest

from bot.server.batching import Batched


def test_items_arriving_during_a_batch_go_together_in_the_next():
    release, batches = threading.Event(), []

    def double(items):
        batches.append(list(items))
        if len(batches) == 1:
            release.wait(5)  # the first batch runs while the others arrive
        return [2 * item for item in items]

    async def main():
        batched = Batched(double)
        first = asyncio.create_task(batched(1))
        await asyncio.sleep(0.05)
        rest = [asyncio.create_task(batched(n)) for n in range(2, 7)]
        await asyncio.sleep(0.05)
        release.set()
        return await first, await asyncio.gather(*rest)

    first, rest = asyncio.run(main())
    assert (first, rest) == (2, [4, 6, 8, 10, 12])
    assert batches == [[1], [2, 3, 4, 5, 6]]


def test_a_failed_batch_fails_its_callers_only_and_a_cancelled_caller_is_skipped():
    calls = []

    def fragile(items):
        calls.append(list(items))
        if "bad" in items:
            raise ValueError("bad item")
        return [item.upper() for item in items]

    async def main():
        batched = Batched(fragile, max_batch=2)
        tasks = [asyncio.create_task(batched(item)) for item in ("bad", "ok", "fine", "gone")]
        await asyncio.sleep(0)  # all four submitted
        tasks[3].cancel()  # its caller goes away while it waits
        results = await asyncio.gather(*tasks, return_exceptions=True)
        return results, await batched("again")

    results, again = asyncio.run(main())
    assert isinstance(results[0], ValueError) and isinstance(results[1], ValueError)  # the same batch
    assert results[2] == "FINE" and isinstance(results[3], asyncio.CancelledError) and again == "AGAIN"
    assert calls == [["bad", "ok"], ["fine", "gone"], ["again"]]


@pytest.mark.parametrize("size", [1, 3])
def test_max_batch_splits_long_queues(size):
    batches = []

    async def main():
        batched = Batched(lambda items: batches.append(len(items)) or items, max_batch=size)
        return await asyncio.gather(*(batched(n) for n in range(5)))

    assert asyncio.run(main()) == [0, 1, 2, 3, 4] and max(batches) <= size
