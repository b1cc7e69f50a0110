"""Continuous batching with packed sequences: one scheduler thread owns the model; requests join and
leave at step boundaries, and each step is ONE forward pass over every active request.

The tokens of all requests in a step are packed into a single row: one token for each request that is
decoding, and a chunk of the prompt for each request that is being prefilled. So a new request rides
along with the decode step instead of costing a forward pass of its own (on a CPU, a forward pass costs
about the same for 1 token as for 40: reading the weights dominates). Each request keeps its own KV
buffers, growing in place; attention runs per request over its own keys (`packed_attention`), so no
padding is computed. Rows carry their own positions, sampling settings, stop strings and adapter version.
The model-specific work lives behind `Runner` (implemented by `bot.generator.HFGenerator`).
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
PREFILL_CHUNK = 256  # default: prompt tokens of one request fed per step (longer prompts take several)


# ---- KV storage ---------------------------------------------------------------------------------

@dataclass
class StepPlan:
    """Where each packed token goes: decode tokens (one per sequence) are written and attended in one
    batched operation over the contiguous slot range; prompt chunks one segment at a time."""
    active: int  # slots in use: [0, active)
    width: int  # longest sequence after this step
    dec_offsets: torch.Tensor  # positions of decode tokens in the packed row
    dec_slots: torch.Tensor
    dec_positions: torch.Tensor
    dec_mask: torch.Tensor  # (active, 1, 1, width): which keys each slot's decode query sees
    prefills: list[tuple[int, int, int, int]]  # (slot, offset in the packed row, first position, tokens)


class PackedLayer(DynamicLayer):
    """One layer's KV for every running sequence: a (slots, heads, positions, dim) buffer; sequence i
    lives in slot i from position 0, so appending writes in place and the decode attention of all
    sequences is one batched call over a view (no copies, no re-concatenation)."""

    def __init__(self, cache: PackedCache) -> None:
        super().__init__()
        self.owner, self.is_initialized = cache, True
        self.keys = self.values = None

    def allocate(self, slots: int, heads: int, positions: int, dim: int, dtype, device) -> None:
        old = (self.keys, self.values)
        self.keys = torch.zeros(slots, heads, positions, dim, dtype=dtype, device=device)
        self.values = torch.zeros_like(self.keys)
        if old[0] is not None:
            s, _, t, _ = old[0].shape
            self.keys[:s, :, :t], self.values[:s, :, :t] = old

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        plan = self.owner.plan
        keys, values = key_states[0], value_states[0]  # (heads, packed tokens, dim)
        if len(plan.dec_offsets):
            self.keys[plan.dec_slots, :, plan.dec_positions] = keys[:, plan.dec_offsets].transpose(0, 1)
            self.values[plan.dec_slots, :, plan.dec_positions] = values[:, plan.dec_offsets].transpose(0, 1)
        for slot, offset, start, n in plan.prefills:
            self.keys[slot, :, start:start + n] = keys[:, offset:offset + n]
            self.values[slot, :, start:start + n] = values[:, offset:offset + n]
        return key_states, value_states

    def get_seq_length(self) -> int:
        return 0


class PackedCache(Cache):
    """The KV of every running sequence, for every layer, in slots kept contiguous."""

    def __init__(self, num_layers: int, heads: int, dim: int, dtype, device, slots: int) -> None:
        super().__init__(layers=[PackedLayer(self) for _ in range(num_layers)])
        self.shape, self.dtype, self.device = (heads, dim), dtype, device
        self.slot_of: dict[int, int] = {}
        self.order: list[int] = []  # seq in each slot
        self.length: dict[int, int] = {}
        self.plan: StepPlan | None = None
        self._allocate(slots, 256)

    def _allocate(self, slots: int, positions: int) -> None:
        self.capacity = (slots, positions)
        for layer in self.layers:
            layer.allocate(slots, self.shape[0], positions, self.shape[1], self.dtype, self.device)

    def slot(self, seq: int) -> int:
        if seq not in self.slot_of:
            if len(self.order) == self.capacity[0]:
                self._allocate(2 * self.capacity[0], self.capacity[1])
            self.slot_of[seq], self.length[seq] = len(self.order), 0
            self.order.append(seq)
        return self.slot_of[seq]

    def release(self, seq: int) -> None:
        """Free a sequence's slot; the last slot moves into it so the used range stays contiguous."""
        if seq not in self.slot_of:
            return
        slot, last = self.slot_of.pop(seq), self.order.pop()
        del self.length[seq]
        if last != seq:
            moved, n = len(self.order), self.length[last]  # `last` sat in the slot just past the end
            for layer in self.layers:
                layer.keys[slot, :, :n] = layer.keys[moved, :, :n]
                layer.values[slot, :, :n] = layer.values[moved, :, :n]
            self.order[slot], self.slot_of[last] = last, slot

    def prepare(self, segments: list[Segment]) -> None:
        """Make room for this step's tokens and describe where they go (shared by all layers)."""
        ends = [s.start + len(s.tokens) for s in segments]
        if max(ends) > self.capacity[1]:
            self._allocate(self.capacity[0], max(2 * self.capacity[1], max(ends)))
        decode, prefills, offset = [], [], 0
        for segment, end in zip(segments, ends):
            slot = self.slot(segment.row.seq)
            self.length[segment.row.seq] = end
            if len(segment.tokens) == 1:
                decode.append((offset, slot, segment.start))
            else:
                prefills.append((slot, offset, segment.start, len(segment.tokens)))
            offset += len(segment.tokens)
        self.plan = self._plan(decode, prefills)

    def _plan(self, decode: list[tuple[int, int, int]], prefills: list) -> StepPlan:
        active, width = len(self.order), max(self.length.values())
        as_tensor = lambda i: torch.tensor([d[i] for d in decode], dtype=torch.long, device=self.device)  # noqa: E731
        visible = torch.ones(active, dtype=torch.long, device=self.device)  # non-decoding slots: a dummy key
        if decode:
            visible[as_tensor(1)] = as_tensor(2) + 1
        mask = torch.arange(width, device=self.device)[None, :] < visible[:, None]
        return StepPlan(active, width, as_tensor(0), as_tensor(1), as_tensor(2), mask[:, None, None, :], prefills)

    def copy_prefix(self, seq: int, length: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        slot = self.slot_of[seq]
        return [(layer.keys[slot, :, :length].clone(), layer.values[slot, :, :length].clone())
                for layer in self.layers]

    def seed(self, seq: int, prefix: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        slot, length = self.slot(seq), prefix[0][0].shape[1]
        if length > self.capacity[1]:
            self._allocate(self.capacity[0], 2 * length)
        for layer, (keys, values) in zip(self.layers, prefix):
            layer.keys[slot, :, :length], layer.values[slot, :, :length] = keys, values
        self.length[seq] = length


def _decode_attention(query: torch.Tensor, layer: PackedLayer, plan: StepPlan, scaling: float) -> torch.Tensor:
    """One token per sequence against the slot range's keys, as two batched matmuls over views of the
    buffers. The query heads that share a KV head are stacked as rows, so GQA needs no K/V copies."""
    heads, dim = query.shape[1], query.shape[3]
    keys, values = layer.keys[:plan.active, :, :plan.width], layer.values[:plan.active, :, :plan.width]
    group = heads // keys.shape[1]
    q = query.new_zeros(plan.active, heads, dim)
    q[plan.dec_slots] = query[0][:, plan.dec_offsets].transpose(0, 1)
    scores = torch.matmul(q.view(plan.active, keys.shape[1], group, dim), keys.transpose(-1, -2)) * scaling
    scores = scores.masked_fill(~plan.dec_mask, float("-inf")).softmax(-1)
    out = torch.matmul(scores, values).view(plan.active, heads, dim)
    return out[plan.dec_slots].transpose(0, 1)


def packed_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                     packed_cache: PackedCache | None = None, **kwargs):
    """Attention for a packed step (an `AttentionInterface` function): each sequence's queries see
    only that sequence's keys. All decode queries go in one batched call over the slot range."""
    layer, plan = packed_cache.layers[module.layer_idx], packed_cache.plan
    out = torch.empty_like(query)  # (1, heads, packed tokens, dim)
    if len(plan.dec_offsets):
        out[0][:, plan.dec_offsets] = _decode_attention(query, layer, plan, scaling)
    for slot, offset, start, n in plan.prefills:
        total = start + n
        mask = torch.arange(total, device=query.device)[None, :] <= (start + torch.arange(n, device=query.device))[:, None]
        out[:, :, offset:offset + n] = F.scaled_dot_product_attention(
            query[:, :, offset:offset + n], layer.keys[slot:slot + 1, :, :total], layer.values[slot:slot + 1, :, :total],
            attn_mask=mask, scale=scaling, enable_gqa=True)
    return out.transpose(1, 2).contiguous(), None


KV = list[tuple[torch.Tensor, torch.Tensor]]  # one (keys, values) pair per layer


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
    seq: int
    fed: int = 0  # prompt tokens already in the KV cache
    last_token: int = 0
    generated: int = 0
    finish_reason: str | None = None  # "stop" (end of answer or a stop string), "length" or "cancelled"

    @property
    def prefilling(self) -> bool:
        return self.fed < len(self.job.prompt)


@dataclass(frozen=True)
class Segment:
    """What one request contributes to a packed step: tokens and the position of the first."""
    row: Row
    tokens: list[int]
    start: int


def plan_step(rows: list[Row], chunk: int = PREFILL_CHUNK) -> list[Segment]:
    segments = []
    for row in rows:
        if row.prefilling:
            segments.append(Segment(row, row.job.prompt[row.fed:row.fed + chunk], row.fed))
        else:
            segments.append(Segment(row, [row.last_token], len(row.job.prompt) + row.generated - 1))
    return segments


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

    def start(self, row: Row) -> int: ...

    def forward(self, segments: list[Segment]) -> torch.Tensor: ...

    def release(self, row: Row) -> None: ...


# ---- the scheduler ----------------------------------------------------------------------------

class Scheduler:
    """Runs the batch loop in its own thread. `submit` is thread-safe and never blocks; `call` runs a
    function in the loop's thread between two steps (adapter loads, probes) and returns its future."""

    def __init__(self, runner: Runner, max_batch: int = 16, max_queue: int = 64,
                 prefill_chunk: int = PREFILL_CHUNK) -> None:
        self.runner, self.max_batch, self.prefill_chunk = runner, max_batch, prefill_chunk
        self.pending: queue.Queue[Job] = queue.Queue(maxsize=max_queue)
        self.controls: queue.Queue[tuple[Callable, Future]] = queue.Queue()
        self.rows: list[Row] = []
        self.steps = self.rows_stepped = self.prefill_tokens = 0
        self.seconds = 0.0
        self._next_seq = 0
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
        return queued or any(row.job.version == version for row in self.rows)

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
                for row in self.rows:
                    row.job.future.set_exception(exc)
                    self.runner.release(row)
                self.rows = []

    def _tick(self) -> None:
        self._run_controls()
        for job in self._take(block=not self.rows):
            self._admit(job)
        if self.rows:
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
        room = self.max_batch - len(self.rows)
        try:
            if block:
                jobs.append(self.pending.get(timeout=0.05))
            while len(jobs) < room:
                jobs.append(self.pending.get_nowait())
        except queue.Empty:
            pass
        for job in jobs:
            if job.cancel.is_set():
                job.future.set_result((0, "cancelled"))
        return [job for job in jobs if not job.cancel.is_set()]

    def _admit(self, job: Job) -> None:
        self._next_seq += 1
        row = Row(job, TextDecoder(self.runner.tokenizer, job.stops), seq=self._next_seq)
        try:
            row.fed = self.runner.start(row)
        except Exception as exc:  # noqa: BLE001 — only this request fails; the batch keeps going
            job.future.set_exception(exc)
            self.runner.release(row)
            return
        self.rows.append(row)

    def _step(self) -> None:
        started = time.perf_counter()
        segments = plan_step(self.rows, self.prefill_chunk)
        logits = self.runner.forward(segments)
        self.steps, self.rows_stepped = self.steps + 1, self.rows_stepped + len(segments)
        ready, ready_logits = [], []
        for i, segment in enumerate(segments):
            row = segment.row
            if row.prefilling:
                row.fed += len(segment.tokens)
                self.prefill_tokens += len(segment.tokens)
                if row.prefilling:
                    continue
            ready.append(row)
            ready_logits.append(i)
        if ready:
            self._advance(ready, sample(logits[ready_logits], ready))
        self._retire()
        self.seconds += time.perf_counter() - started

    def _advance(self, rows: list[Row], tokens: list[int]) -> None:
        for row, token in zip(rows, tokens):
            row.last_token, row.generated = token, row.generated + 1
            finished = token in self.runner.eos_ids
            if not finished:
                delta = row.decoder.add(token)
                if delta:
                    row.job.emit(delta)
            row.finish_reason = ("stop" if finished or row.decoder.stopped else
                                 "cancelled" if row.job.cancel.is_set() else
                                 "length" if row.generated >= row.job.max_new_tokens else None)

    def _retire(self) -> None:
        keep = []
        for row in self.rows:
            if row.finish_reason is None and row.job.cancel.is_set():
                row.finish_reason = "cancelled"
            if row.finish_reason is None:
                keep.append(row)
                continue
            tail = row.decoder.finish() if row.finish_reason != "cancelled" else ""
            if tail:
                row.job.emit(tail)
            self.runner.release(row)
            row.job.future.set_result((row.generated, row.finish_reason))
        self.rows = keep
