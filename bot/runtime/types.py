"""The runtime's value types: what the web app sends (`GenerationRequest`), what it gets back
(`GenerationResult`, the errors), and what the scheduler, the KV cache and the worker processes pass
between them (`Job`, `Row`, `Segment`, `KVTransfer`). Plain data: this module imports none of its
siblings, so every runtime module can import it and none needs another's types."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol

from feedback.registry import BASE_VERSION

Message = dict[str, Any]  # one chat turn: {"role": ..., "content": ...}


class AdapterError(RuntimeError):
    """An adapter was refused; the message says why. The live version keeps serving."""


class Busy(RuntimeError):
    """The request queue is full; the client should retry later."""


class ModelUnavailable(RuntimeError):
    """The model cannot serve (its worker process stopped); the message says why, for the logs."""


class ModelNotAvailable(RuntimeError):
    """The base model cannot be found or provisioned; the message says what to run."""


@dataclass(frozen=True)
class GenerationRequest:
    messages: list[Message]
    adapter_version: str = BASE_VERSION
    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class GenerationResult:
    text: str
    adapter_version: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str = "stop"  # "stop", "length" or "cancelled"


@dataclass
class KVTransfer:
    """A request prefilled in one process and decoded in another (`bot.runtime.workers`): the prompt's KV, the
    first sampled token and the text decoder's state, so the decoding side carries on exactly where
    the prefilling side stopped. Plain data (the KV as bytes), so it pickles across processes."""

    prompt: list[int]
    kv: tuple[bytes, tuple[int, ...], str]  # (raw bytes, shape, dtype name) of (layers, 2, heads, tokens, dim)
    token: int
    decoded: list[int]  # what the text decoder has seen
    sent: str  # the text already emitted
    max_new_tokens: int


class TextStream(Protocol):
    """What a `Row` turns its tokens into text with (`bot.runtime.detokenizer.Detokenizer`)."""

    ids: list[int]
    sent: str
    stopped: bool

    def add(self, token_id: int) -> str: ...

    def finish(self) -> str: ...


@dataclass
class Job:
    prompt: list[int]
    prefix_len: int  # leading prompt tokens shared by many requests (the system prompt): KV-cached
    version: str
    max_new_tokens: int
    temperature: float
    top_p: float
    stops: tuple[str, ...]
    emit: Callable[[str], None]
    cancel: threading.Event
    future: Future[tuple[int, str]] = field(default_factory=Future)  # (tokens generated, finish reason)
    resume: KVTransfer | None = None  # the prompt was prefilled elsewhere: carry on from there
    export: bool = False  # stop after the first token (finish reason "transfer"); the runner leaves a
    # `KVTransfer` in `transfer` when it releases the row
    transfer: KVTransfer | None = None


@dataclass
class Row:
    job: Job
    detokenizer: TextStream
    seq: int
    fed: int = 0  # prompt tokens already in the KV cache
    last_token: int = 0
    generated: int = 0
    finish_reason: str | None = None  # "stop" (end of answer or a stop string), "length", "cancelled", or
    # "transfer" (an exporting job after its first token)

    @property
    def prefilling(self) -> bool:
        return self.fed < len(self.job.prompt)


@dataclass(frozen=True)
class Segment:
    """What one request contributes to a packed step: tokens and the position of the first."""

    row: Row
    tokens: list[int]
    start: int
