"""A fake generator with a reply queue (the idea of simonw/llm's MockModel.enqueue), injected through
`create_app(generator=...)`. It follows the `Generator` protocol exactly."""
from __future__ import annotations

import threading
from collections import deque
from pathlib import Path

from bot.generator import AdapterError, GenerationRequest, GenerationResult


class FakeGenerator:
    def __init__(self, default_reply: str = "Happy to help.", delay: float = 0.0) -> None:
        self.delay = delay  # seconds between emitted words, to exercise streaming and cancellation
        self.cancelled: list[GenerationRequest] = []
        self.replies: deque[str] = deque()
        self.default_reply = default_reply
        self.requests: list[GenerationRequest] = []
        self.adapters: dict[str, Path] = {}
        self.loaded = threading.Event()
        self.release_load = threading.Event()
        self.release_load.set()

    def enqueue(self, *replies: str) -> None:
        self.replies.extend(replies)

    def load(self) -> None:
        self.release_load.wait(timeout=30)
        self.loaded.set()

    def generate(self, request: GenerationRequest, emit, cancel: threading.Event) -> GenerationResult:
        self.requests.append(request)
        if request.adapter_version != "base" and request.adapter_version not in self.adapters:
            raise AdapterError(f"adapter {request.adapter_version!r} is not loaded")
        text = self.replies.popleft() if self.replies else self.default_reply
        pieces = text.split(" ")
        for i, piece in enumerate(pieces):
            if cancel.wait(self.delay) if self.delay else cancel.is_set():
                self.cancelled.append(request)
                break
            emit(piece if i == 0 else " " + piece)
        return GenerationResult(text=text, adapter_version=request.adapter_version,
                                prompt_tokens=sum(len(m["content"].split()) for m in request.messages),
                                completion_tokens=len(pieces))

    def load_adapter(self, version: str, path: Path) -> None:
        if not (Path(path) / "adapter_config.json").is_file():
            raise AdapterError(f"adapter {version} at {path} has no adapter_config.json")
        self.adapters[version] = Path(path)

    def unload_adapter(self, version: str) -> None:
        self.adapters.pop(version, None)
