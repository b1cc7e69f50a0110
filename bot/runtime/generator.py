"""The `Generator` protocol: what the web app's bridge (`bot.runtime.bridge`) and the adapter manager
drive. `HFGenerator` (`bot.runtime.hf_generator`) runs the model in this process; `ProcessGenerator`
(`bot.runtime.workers`) runs it in worker processes behind the same protocol."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Protocol, TypeVar

from bot.runtime.types import GenerationRequest, GenerationResult, Message

log = logging.getLogger(__name__)

PROBE_MESSAGES: list[Message] = [{"role": "user", "content": "Hello, can you help me?"}]
PROBE_TOKENS = 2  # the probe prompt must prefill and decode (a prefill worker, which stops after 1 token: 1);
# each token costs a batch step, which under load takes up to a second on 2 CPU cores
UNLOAD_POLL_SECONDS = 0.05  # how often an unload waiting for its version's requests to finish looks again

R = TypeVar("R")


class Generator(Protocol):
    def load(self) -> None: ...

    def submit(
        self, request: GenerationRequest, emit: Callable[[str], None], cancel: threading.Event
    ) -> Future[GenerationResult]: ...

    def load_adapter(self, version: str, path: Path) -> None: ...

    def unload_adapter(self, version: str) -> None: ...

    def stats(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


def model_threads(setting: int = 0) -> int:
    """CPU threads for the model: `setting`, or (0) all cores but one — the event loop, the websockets
    and the database need a core too. On 2 cores: 1 thread, which also skips the thread synchronisation
    that costs more than it gains on one-row decode steps (measured by bench/serve.py: docs/performance.md)."""
    return setting if setting > 0 else max(1, (os.cpu_count() or 2) - 1)


def set_threads(count: int) -> None:
    """Run in the scheduler thread: OpenMP's thread count is per calling thread."""
    import torch

    torch.set_num_threads(count)
    log.info("model runs on %d CPU thread(s)", count)


def result_future(job_future: Future[tuple[int, str]], make: Callable[[tuple[int, str]], R]) -> Future[R]:
    """A future of the `GenerationResult`, from the scheduler's future of (tokens, finish reason)."""
    result: Future[R] = Future()

    def done(f: Future[tuple[int, str]]) -> None:
        if f.exception() is not None:
            result.set_exception(f.exception())
        else:
            result.set_result(make(f.result()))

    job_future.add_done_callback(done)
    return result
