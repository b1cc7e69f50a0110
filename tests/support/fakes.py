"""A fake generator with a reply queue (the idea of simonw/llm's MockModel.enqueue), injected through
`create_app(generator=...)`. It follows the `Generator` protocol: requests run one at a time in its
own worker thread; `max_pending` bounds the queue like the real scheduler."""

from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from bot.runtime.types import AdapterError, Busy, GenerationRequest, GenerationResult


class FakeGenerator:
    def __init__(self, default_reply: str = "Happy to help.", delay: float = 0.0, max_pending: int = 64) -> None:
        self.delay = delay  # seconds between emitted words, to exercise streaming and cancellation
        self.max_pending = max_pending
        self.pending = 0
        self.cancelled: list[GenerationRequest] = []
        self.replies: deque[str] = deque()
        self.default_reply = default_reply
        self.requests: list[GenerationRequest] = []
        self.adapters: dict[str, Path] = {}
        self.loads: list[str] = []  # every successful load_adapter, in order
        self.release_load = threading.Event()
        self.release_load.set()
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fake-generator")
        self._lock = threading.Lock()

    def enqueue(self, *replies: str) -> None:
        self.replies.extend(replies)

    def load(self) -> None:
        self.release_load.wait(timeout=30)

    def stats(self) -> dict:
        return {"queue_depth": self.pending, "batch_size": min(self.pending, 1)}

    def close(self) -> None:
        self._worker.shutdown(wait=False, cancel_futures=True)

    def submit(self, request: GenerationRequest, emit, cancel: threading.Event) -> Future:
        with self._lock:
            if self.pending >= self.max_pending:
                raise Busy(f"the server is at capacity ({self.max_pending} requests waiting)")
            self.pending += 1
        return self._worker.submit(self._generate, request, emit, cancel)

    def _generate(self, request: GenerationRequest, emit, cancel: threading.Event) -> GenerationResult:
        try:
            self.requests.append(request)
            if request.adapter_version != "base" and request.adapter_version not in self.adapters:
                raise AdapterError(f"adapter {request.adapter_version!r} is not loaded")
            text = self.replies.popleft() if self.replies else self.default_reply
            pieces, reason = text.split(" ")[: request.max_new_tokens], "stop"
            if len(text.split(" ")) > request.max_new_tokens:
                text, reason = " ".join(pieces), "length"
            for i, piece in enumerate(pieces):
                if cancel.wait(self.delay) if self.delay else cancel.is_set():
                    self.cancelled.append(request)
                    reason = "cancelled"
                    break
                emit(piece if i == 0 else " " + piece)
            return GenerationResult(
                text=text,
                adapter_version=request.adapter_version,
                prompt_tokens=sum(len(m["content"].split()) for m in request.messages),
                completion_tokens=len(pieces),
                finish_reason=reason,
            )
        finally:
            with self._lock:
                self.pending -= 1

    def load_adapter(self, version: str, path: Path) -> None:
        if not (Path(path) / "adapter_config.json").is_file():
            raise AdapterError(f"adapter {version} at {path} has no adapter_config.json")
        self.adapters[version] = Path(path)
        self.loads.append(version)

    def unload_adapter(self, version: str) -> None:
        self.adapters.pop(version, None)


class HashEmbedder:
    """A deterministic bag-of-words embedder for unit tests (injected through `create_app(embedder=...)`):
    texts sharing words are close, texts sharing none are orthogonal (up to hash collisions)."""

    identity = "hash-embedder@test"
    dim = 512

    def __init__(self) -> None:
        self.calls = 0

    def encode(self, texts: list[str], batch_size: int = 64, progress: bool = False):
        import re

        import numpy as np

        self.calls += 1
        vectors = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in re.findall(r"[a-z0-9]+", text.lower()):
                vectors[row, zlib_hash(word) % self.dim] += 1.0
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.where(norms == 0, 1.0, norms)


def zlib_hash(word: str) -> int:
    import zlib

    return zlib.crc32(word.encode())
