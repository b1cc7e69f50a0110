"""Abuse limits per client address: a message rate (the `limits` library's moving window) and a cap
on concurrently open chat connections. Both are named settings with explicit refusal messages."""

from __future__ import annotations

import math
import time
from collections import Counter

from limits import parse, storage, strategies


class LimitExceeded(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


class ClientLimits:
    def __init__(self, rate: str, max_sessions: int) -> None:
        self.rate_text, self.rate = rate, parse(rate)
        self.limiter = strategies.MovingWindowRateLimiter(storage.MemoryStorage())
        self.max_sessions = max_sessions
        self.open: Counter[str] = Counter()

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
