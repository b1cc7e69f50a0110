"""The model's batch shared between client addresses (`bot.server.limits.FairShare`), unit by unit."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from bot.runtime.types import Busy
from bot.server.limits import FairShare


async def _hold(share: FairShare, client: str, started: list[str], release: asyncio.Event) -> None:
    async with share.turn(client):
        started.append(client)
        await release.wait()


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_an_address_alone_gets_the_whole_batch_and_others_get_their_part_as_slots_free():
    async def scenario() -> None:
        share, started, release = FairShare(slots=8, max_waiting=64), [], {}
        for i in range(12):  # one address: 8 at once (a proxy's customers are not held to a part)
            release[f"a{i}"] = asyncio.Event()
            asyncio.create_task(_hold(share, "A", started, release[f"a{i}"]))
        await _settle()
        assert started == ["A"] * 8 and len(share.waiting) == 4
        release["b"] = asyncio.Event()
        asyncio.create_task(_hold(share, "B", started, release["b"]))
        await _settle()
        assert share.part() == 4 and started.count("B") == 0  # the batch is full
        release["a0"].set()
        await _settle()
        assert started[-1] == "B"  # the freed slot went to B, not to A's earlier waiters
        for i in range(1, 5):
            release[f"a{i}"].set()
        await _settle()
        assert started.count("A") == 9 and share.active["A"] == 4  # A down to its part, then one more of it
        for event in release.values():
            event.set()
        await _settle()
        assert not share.active and not share.waiting

    asyncio.run(scenario())


def test_the_part_never_falls_below_a_quarter_of_the_batch():
    share = FairShare(slots=16, max_waiting=64)
    share.active.update({f"10.0.0.{i}": 1 for i in range(15)})
    assert share.part() == 4
    assert FairShare(slots=16, max_waiting=64, fair=False).part() == 16


def test_a_full_waiting_line_is_busy_and_a_cancelled_waiter_leaves_it():
    async def scenario() -> None:
        share, release = FairShare(slots=1, max_waiting=1), asyncio.Event()
        holder = asyncio.create_task(_hold(share, "A", [], release))
        waiter = asyncio.create_task(_hold(share, "B", [], release))
        await _settle()
        with pytest.raises(Busy):
            async with share.turn("C"):
                pass
        waiter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiter
        assert share.waiting == []
        release.set()
        await holder
        assert not share.active

    asyncio.run(scenario())
