"""Continuous batching: one scheduler thread owns the model; requests join and leave at step boundaries.

Each step runs one forward pass over every active request. New requests are prefilled together
(left-padded) and merged into the running batch; finished or cancelled ones are dropped from it
before the next step. The KV cache grows in place (no re-concatenation per token), rows carry their
own positions, sampling settings, stop strings and adapter version. The model-specific work lives
behind `Runner` (implemented by `bot.generator.HFGenerator`).
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F
from transformers.cache_utils import Cache, DynamicLayer

from bot.generator import Busy

log = logging.getLogger(__name__)


# ---- KV cache ----------------------------------------------------------------------------------

class GrowingLayer(DynamicLayer):
    """A KV layer with spare capacity: appending a token writes in place instead of concatenating
    the whole cache every step (which cost ~15% of a decode step)."""

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device, self.length, self.is_initialized = key_states.device, 0, True
        self._set_buffers(key_states.new_zeros(*key_states.shape[:2], 0, key_states.shape[-1]),
                          value_states.new_zeros(*value_states.shape[:2], 0, value_states.shape[-1]), 0)

    def _set_buffers(self, keys: torch.Tensor, values: torch.Tensor, length: int, spare: int = 64) -> None:
        shape = (*keys.shape[:2], length + spare, keys.shape[-1])
        self._k, self._v = keys.new_zeros(shape), values.new_zeros(shape)
        self._k[:, :, :length], self._v[:, :, :length] = keys[:, :, :length], values[:, :, :length]
        self.length = length
        self.keys, self.values = self._k[:, :, :length], self._v[:, :, :length]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n, end = key_states.shape[-2], self.length + key_states.shape[-2]
        if end > self._k.shape[-2]:
            self._set_buffers(self.keys, self.values, self.length, spare=max(64, self.length + n))
        self._k[:, :, self.length:end], self._v[:, :, self.length:end] = key_states, value_states
        self.length = end
        self.keys, self.values = self._k[:, :, :end], self._v[:, :, :end]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length if self.is_initialized else 0

    def reshape(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        self.device, self.is_initialized = keys.device, True
        self._set_buffers(keys, values, keys.shape[-2])


def new_cache(num_layers: int) -> Cache:
    return Cache(layers=[GrowingLayer() for _ in range(num_layers)])


def _left_pad(tensor: torch.Tensor, length: int, dim: int) -> torch.Tensor:
    missing = length - tensor.shape[dim]
    if missing == 0:
        return tensor
    pad = [0, 0] * (tensor.dim() - 1 - dim % tensor.dim()) + [missing, 0]
    return F.pad(tensor, pad)


KV = list[tuple[torch.Tensor, torch.Tensor]]  # one (keys, values) pair per layer, batch of 1


class PrefixCache:
    """KV of prompt prefixes shared by many requests (the system prompt), per adapter version, LRU.
    A hit skips recomputing those tokens at prefill."""

    def __init__(self, capacity: int = 16) -> None:
        self.capacity = capacity
        self.entries: OrderedDict[tuple[str, tuple[int, ...]], KV] = OrderedDict()

    def get(self, version: str, tokens: tuple[int, ...]) -> KV | None:
        key = (version, tokens)
        if key in self.entries:
            self.entries.move_to_end(key)
        return self.entries.get(key)

    def put(self, version: str, tokens: tuple[int, ...], kv: KV) -> None:
        self.entries[(version, tokens)] = kv
        self.entries.move_to_end((version, tokens))
        while len(self.entries) > self.capacity:
            self.entries.popitem(last=False)

    def drop(self, version: str) -> None:
        for key in [k for k in self.entries if k[0] == version]:
            del self.entries[key]


def seed_cache(cache: Cache, prefixes: list[KV | None], width: int) -> None:
    """Fill a fresh cache with each row's cached prefix, left-padded to `width` (zeros for misses)."""
    template = next(kv for kv in prefixes if kv is not None)
    for i, layer in enumerate(cache.layers):
        keys, values = template[i]
        blank = keys.new_zeros(1, keys.shape[1], width, keys.shape[-1])
        layer.reshape(torch.cat([_left_pad(kv[i][0], width, 2) if kv else blank for kv in prefixes]),
                      torch.cat([_left_pad(kv[i][1], width, 2) if kv else blank for kv in prefixes]))


def row_prefix(cache: Cache, row: int, start: int, length: int) -> KV:
    return [(layer.keys[row:row + 1, :, start:start + length].clone(),
             layer.values[row:row + 1, :, start:start + length].clone()) for layer in cache.layers]


class Batch:
    """The running batch: a KV cache, its 2-D attention mask and one `Row` per request."""

    def __init__(self) -> None:
        self.cache: Cache | None = None
        self.mask: torch.Tensor | None = None
        self.rows: list[Row] = []

    def merge(self, cache: Cache, mask: torch.Tensor, rows: list[Row]) -> None:
        if not self.rows:
            self.cache, self.mask, self.rows = cache, mask, rows
            return
        length = max(self.mask.shape[1], mask.shape[1])
        for mine, theirs in zip(self.cache.layers, cache.layers):
            mine.reshape(torch.cat([_left_pad(mine.keys, length, 2), _left_pad(theirs.keys, length, 2)]),
                         torch.cat([_left_pad(mine.values, length, 2), _left_pad(theirs.values, length, 2)]))
        self.mask = torch.cat([_left_pad(self.mask, length, 1), _left_pad(mask, length, 1)])
        self.rows = self.rows + rows

    def keep(self, keep: list[int]) -> None:
        """Drop every row not in `keep`, then the leading columns that are padding for all rows."""
        if len(keep) == len(self.rows):
            return
        self.rows = [self.rows[i] for i in keep]
        if not keep:
            self.cache = self.mask = None
            return
        index = torch.tensor(keep, device=self.mask.device)
        mask = self.mask[index]
        start = int((mask.sum(0) > 0).nonzero()[0])
        self.mask = mask[:, start:]
        for layer in self.cache.layers:
            layer.reshape(layer.keys[index, :, start:], layer.values[index, :, start:])


# ---- text -------------------------------------------------------------------------------------

class TextDecoder:
    """Incremental detokenization: emits text only at UTF-8-complete boundaries, holds back a tail
    that could still become a stop string, and cuts the text at the first stop string."""

    def __init__(self, tokenizer, stops: tuple[str, ...] = ()) -> None:
        self.tokenizer, self.stops = tokenizer, tuple(s for s in stops if s)
        self.ids: list[int] = []
        self.sent = ""
        self.stopped = False

    def _held(self, text: str) -> int:
        return max((k for stop in self.stops for k in range(len(stop) - 1, 0, -1) if text.endswith(stop[:k])),
                   default=0)

    def add(self, token_id: int) -> str:
        self.ids.append(token_id)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        cuts = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if cuts:
            self.stopped, text = True, text[:min(cuts)]
        elif text.endswith("\ufffd"):
            return ""
        else:
            text = text[:len(text) - self._held(text)]
        return self._advance(text)

    def finish(self) -> str:
        if self.stopped:
            return ""
        return self._advance(self.tokenizer.decode(self.ids, skip_special_tokens=True))

    def _advance(self, text: str) -> str:
        if not text.startswith(self.sent) or len(text) <= len(self.sent):
            return ""
        delta, self.sent = text[len(self.sent):], text
        return delta


# ---- requests ---------------------------------------------------------------------------------

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
    future: Future = field(default_factory=Future)


@dataclass
class Row:
    job: Job
    decoder: TextDecoder
    position: int  # the position `last_token` takes when it is fed (= tokens already in the cache)
    last_token: int = 0
    generated: int = 0
    finish_reason: str | None = None  # "stop" (end of answer or a stop string), "length" or "cancelled"


def sample(logits: torch.Tensor, rows: list[Row]) -> list[int]:
    """One next token per row: greedy where temperature is 0, else temperature + nucleus sampling."""
    tokens = logits.argmax(-1).tolist()
    for i, row in enumerate(rows):
        if row.job.temperature <= 0:
            continue
        probs = torch.softmax(logits[i].float() / row.job.temperature, -1)
        if row.job.top_p < 1.0:
            sorted_probs, order = probs.sort(descending=True)
            outside = sorted_probs.cumsum(-1) - sorted_probs > row.job.top_p
            probs = probs.scatter(0, order, sorted_probs.masked_fill(outside, 0.0))
        tokens[i] = int(torch.multinomial(probs, 1))
    return tokens


class Runner(Protocol):
    eos_ids: set[int]
    tokenizer: object

    def prefill(self, jobs: list[Job]) -> tuple[torch.Tensor, Cache, torch.Tensor]: ...

    def decode(self, batch: Batch) -> torch.Tensor: ...


# ---- the scheduler ----------------------------------------------------------------------------

class Scheduler:
    """Runs the batch loop in its own thread. `submit` is thread-safe and never blocks; `call` runs a
    function in the loop's thread between two steps (adapter loads, probes) and returns its future."""

    def __init__(self, runner: Runner, max_batch: int = 16, max_queue: int = 64) -> None:
        self.runner, self.max_batch = runner, max_batch
        self.pending: queue.Queue[Job] = queue.Queue(maxsize=max_queue)
        self.controls: queue.Queue[tuple[Callable, Future]] = queue.Queue()
        self.batch = Batch()
        self.steps = self.rows_stepped = 0
        self.seconds = {"prefill": 0.0, "decode": 0.0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="supportloop-batch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    @property
    def queue_depth(self) -> int:
        return self.pending.qsize()

    def uses(self, version: str) -> bool:
        """Whether a running or queued request uses adapter `version`."""
        with self.pending.mutex:
            queued = any(job.version == version for job in self.pending.queue)
        return queued or any(row.job.version == version for row in self.batch.rows)

    def submit(self, job: Job) -> Future:
        try:
            self.pending.put_nowait(job)
        except queue.Full:
            raise Busy(f"the server is at capacity ({self.pending.maxsize} requests waiting)") from None
        return job.future

    def call(self, fn: Callable) -> Future:
        future: Future = Future()
        self.controls.put((fn, future))
        return future

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._tick()
            except Exception as exc:  # noqa: BLE001 — fail the requests in flight, keep serving
                log.exception("batch step failed")
                for row in self.batch.rows:
                    row.job.future.set_exception(exc)
                self.batch = Batch()

    def _tick(self) -> None:
        self._run_controls()
        jobs = self._take(block=not self.batch.rows)
        if jobs:
            self._admit(jobs)
        if self.batch.rows:
            self._step()

    def _run_controls(self) -> None:
        while True:
            try:
                fn, future = self.controls.get_nowait()
            except queue.Empty:
                return
            try:
                future.set_result(fn())
            except Exception as exc:  # noqa: BLE001 — handed to the caller
                future.set_exception(exc)

    def _take(self, block: bool) -> list[Job]:
        jobs: list[Job] = []
        room = self.max_batch - len(self.batch.rows)
        try:
            if block:
                jobs.append(self.pending.get(timeout=0.05))
            while len(jobs) < room:
                jobs.append(self.pending.get_nowait())
        except queue.Empty:
            pass
        live = [job for job in jobs if not job.cancel.is_set()]
        for job in jobs:
            if job.cancel.is_set():
                job.future.set_result((0, "cancelled"))
        return live

    def _admit(self, jobs: list[Job]) -> None:
        started = time.perf_counter()
        try:
            logits, cache, mask = self.runner.prefill(jobs)
        except Exception as exc:  # noqa: BLE001 — only the new requests fail; the batch keeps going
            log.exception("prefill failed")
            for job in jobs:
                job.future.set_exception(exc)
            return
        rows = [Row(job, TextDecoder(self.runner.tokenizer, job.stops), position=len(job.prompt) - 1)
                for job in jobs]
        self._advance(rows, sample(logits, rows))
        self.batch.merge(cache, mask, rows)
        self._retire()
        self.seconds["prefill"] += time.perf_counter() - started

    def _step(self) -> None:
        started = time.perf_counter()
        self.batch.mask = F.pad(self.batch.mask, (0, 1), value=1)  # the column of the token fed now
        logits = self.runner.decode(self.batch)
        self.steps, self.rows_stepped = self.steps + 1, self.rows_stepped + len(self.batch.rows)
        self._advance(self.batch.rows, sample(logits, self.batch.rows))
        self._retire()
        self.seconds["decode"] += time.perf_counter() - started

    def _advance(self, rows: list[Row], tokens: list[int]) -> None:
        for row, token in zip(rows, tokens):
            row.last_token, row.position, row.generated = token, row.position + 1, row.generated + 1
            finished = token in self.runner.eos_ids
            if not finished:
                delta = row.decoder.add(token)
                if delta:
                    row.job.emit(delta)
            row.finish_reason = ("stop" if finished or row.decoder.stopped else
                                 "cancelled" if row.job.cancel.is_set() else
                                 "length" if row.generated >= row.job.max_new_tokens else None)

    def _retire(self) -> None:
        for row in self.batch.rows:
            if row.finish_reason:
                tail = row.decoder.finish()
                if tail:
                    row.job.emit(tail)
                row.job.future.set_result((row.generated, row.finish_reason))
        self.batch.keep([i for i, row in enumerate(self.batch.rows) if not row.finish_reason])

