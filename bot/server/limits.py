"""Abuse limits per client address: a message rate (the `limits` library's moving window), a cap on
concurrently open chat connections (both named settings with explicit refusal messages), and a fair
share of the model: at most `max_answers` of one client's answers generate at once, the others wait
their turn, so one address flooding the server leaves the rest of the batch to everyone else."""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from limits import parse, storage, strategies


class LimitExceeded(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


class ClientLimits:
    def __init__(self, rate: str, max_sessions: int, max_answers: int = 4) -> None:
        self.rate_text, self.rate = rate, parse(rate)
        self.limiter = strategies.MovingWindowRateLimiter(storage.MemoryStorage())
        self.max_sessions, self.max_answers = max_sessions, max_answers
        self.open: Counter[str] = Counter()
        self._turns: dict[str, asyncio.Semaphore] = {}
        self._waiting: Counter[str] = Counter()  # answers of each client generating or waiting

    @asynccontextmanager
    async def turn(self, client: str) -> AsyncIterator[None]:
        """Hold one of `client`'s `max_answers` generation turns (waiting for one, first come first
        served) for the length of an answer."""
        turns = self._turns.setdefault(client, asyncio.Semaphore(self.max_answers))
        self._waiting[client] += 1
        try:
            async with turns:
                yield
        finally:
            self._waiting[client] -= 1
            if self._waiting[client] <= 0:
                del self._waiting[client], self._turns[client]

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
