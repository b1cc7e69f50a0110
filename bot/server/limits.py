"""Abuse limits per client address: a message rate (the `limits` library's moving window), a cap on
concurrently open chat connections (both named settings with explicit refusal messages), and a fair
share of the model (`FairShare`): each address holds at most an equal part of the batch among those using
it (never less than a quarter), so one address flooding the server cannot crowd out the others, while an
address alone (or everyone behind one proxy address) still gets the whole batch."""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from limits import parse, storage, strategies

from bot.runtime.types import Busy


class LimitExceeded(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


@dataclass
class _Waiter:
    seq: int
    client: str
    granted: asyncio.Future


class FairShare:
    """Up to `slots` answers generate at once (the model's batch); more wait, at most `max_waiting`
    (beyond: `Busy`). Each address may hold at most an equal part of the batch among the addresses using
    it (generating, waiting, or with a chat socket open: a customer reading an answer will ask again),
    never less than a quarter of it: an address alone (or everyone behind one proxy) gets the whole
    batch, while one address flooding next to others cannot fill the batch and slow every step for
    them. A freed slot goes to the waiting address with the fewest answers generating, the
    longest-waiting first among equals. `fair=False`: first come, first served, no part."""

    def __init__(self, slots: int, max_waiting: int, fair: bool = True) -> None:
        self.slots, self.max_waiting, self.fair = slots, max_waiting, fair
        self.floor = max(1, slots // 4)
        self.present: Callable[[], Iterable[str]] = tuple  # addresses connected (open chat sockets)
        self.active: Counter[str] = Counter()
        self.waiting: list[_Waiter] = []
        self._seq = itertools.count()

    def part(self) -> int:
        """The most slots one address may hold now."""
        if not self.fair:
            return self.slots
        addresses = set(self.active) | {w.client for w in self.waiting} | set(self.present())
        return max(self.floor, -(-self.slots // max(1, len(addresses))))

    def _may_start(self, client: str) -> bool:
        return sum(self.active.values()) < self.slots and self.active[client] < self.part()

    @asynccontextmanager
    async def turn(self, client: str) -> AsyncIterator[None]:
        """Hold a slot of the batch for `client` for the length of an answer (waiting for one if needed)."""
        await self._wait(client)
        try:
            yield
        finally:
            self._release(client)

    async def _wait(self, client: str) -> None:
        if len(self.waiting) >= self.max_waiting:
            raise Busy(f"the server is at capacity ({self.max_waiting} requests waiting)")
        waiter = _Waiter(next(self._seq), client, asyncio.get_running_loop().create_future())
        self.waiting.append(waiter)
        self._grant()  # at once if its part and a slot allow
        try:
            await waiter.granted
        except asyncio.CancelledError:
            if waiter.granted.done() and not waiter.granted.cancelled():
                self._release(client)  # granted as it was cancelled: give the slot on
            elif waiter in self.waiting:
                self.waiting.remove(waiter)
                self._grant()  # the part of the others may have grown
            raise

    def _release(self, client: str) -> None:
        self.active[client] -= 1
        if self.active[client] <= 0:
            del self.active[client]
        self._grant()

    def _grant(self) -> None:
        while True:
            ready = [w for w in self.waiting if not w.granted.done() and self._may_start(w.client)]  # done: cancelled
            if not ready:
                return
            chosen = min(ready, key=lambda w: (self.active[w.client], w.seq) if self.fair else (0, w.seq))
            self.waiting.remove(chosen)
            self.active[chosen.client] += 1
            chosen.granted.set_result(None)


class ClientLimits:
    def __init__(self, rate: str, max_sessions: int, share: FairShare | None = None) -> None:
        self.rate_text, self.rate = rate, parse(rate)
        self.limiter = strategies.MovingWindowRateLimiter(storage.MemoryStorage())
        self.max_sessions = max_sessions
        self.open: Counter[str] = Counter()
        self.share = share or FairShare(slots=16, max_waiting=64)
        self.share.present = self.open.keys

    def turn(self, client: str):
        """A slot of the model's batch for one of `client`'s answers (`FairShare.turn`)."""
        return self.share.turn(client)

    def hit(self, client: str) -> None:
        """Count one message from `client`; refuse it when over the rate."""
        if self.limiter.hit(self.rate, client):
            return
        reset = self.limiter.get_window_stats(self.rate, client).reset_time
        wait = max(1, math.ceil(reset - time.time()))
        raise LimitExceeded(
            "rate_limited", f"Too many messages from your address (the limit is {self.rate_text}); retry in {wait} s."
        )

    def connect(self, client: str) -> None:
        if self.open[client] >= self.max_sessions:
            raise LimitExceeded(
                "too_many_sessions",
                f"Too many open chat sessions from your address (the limit "
                f"is {self.max_sessions}); close one and retry.",
            )
        self.open[client] += 1

    def disconnect(self, client: str) -> None:
        self.open[client] -= 1
        if self.open[client] <= 0:
            del self.open[client]
