"""Continuous batching with packed sequences: one scheduler thread owns the model; requests join and
leave at step boundaries, and each step is ONE forward pass over every active request.

The tokens of all requests in a step are packed into a single row: one token for each request that is
decoding, and a chunk of the prompt for each request that is being prefilled. So a new request rides
along with the decode step instead of costing a forward pass of its own (on a CPU, a forward pass over a
few tokens costs little more than over one: reading the weights dominates). The KV slots and the attention
that make this work are in `bot.runtime.kv_cache`. Rows carry their own positions, sampling settings, stop
strings and adapter version. The model-specific work lives behind `Runner` (`bot.runtime.hf_generator.HFGenerator`).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Protocol

import torch

from bot.runtime.detokenizer import Detokenizer
from bot.runtime.types import Busy, Job, Row, Segment

log = logging.getLogger(__name__)
PREFILL_CHUNK = 256  # default: prompt tokens of one request fed per step (longer prompts take several)


def plan_step(rows: list[Row], chunk: int = PREFILL_CHUNK) -> list[Segment]:
    segments = []
    for row in rows:
        if row.prefilling:
            segments.append(Segment(row, row.job.prompt[row.fed : row.fed + chunk], row.fed))
        else:
            segments.append(Segment(row, [row.last_token], len(row.job.prompt) + row.generated - 1))
    return segments


def sample(logits: torch.Tensor, rows: list[Row]) -> list[int]:
    """One next token per row: greedy where temperature is 0, else temperature + nucleus sampling."""
    tokens = logits.max(-1).indices.tolist()  # argmax (the first maximum), ~1.5x faster on CPUs
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

    def rank(self, row: Row) -> int: ...


# ---- the scheduler ----------------------------------------------------------------------------


class Scheduler:
    """Runs the batch loop in its own thread. `submit` is thread-safe and never blocks; `call` runs a
    function in the loop's thread between two steps (adapter loads, probes) and returns its future."""

    def __init__(
        self, runner: Runner, max_batch: int = 16, max_queue: int = 64, prefill_chunk: int = PREFILL_CHUNK
    ) -> None:
        self.runner, self.max_batch, self.prefill_chunk = runner, max_batch, prefill_chunk
        self.pending: queue.Queue[Job] = queue.Queue(maxsize=max_queue)
        self.controls: queue.Queue[tuple[Callable, Future]] = queue.Queue()
        self.rows: list[Row] = []
        self.steps = self.rows_stepped = self.prefill_tokens = 0
        self.seconds = 0.0
        self.after_tick: Callable[[], None] | None = None  # called in the loop's thread after every tick
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

    def submit_now(self, job: Job) -> Future:
        """Admit `job` between the next two steps, ahead of the queue and beyond `max_batch`: for an
        adapter's probe, short, which must not wait for a slot in a full batch to validate a version."""
        self.call(lambda: self._admit(job))
        return job.future

    def call(self, fn: Callable) -> Future:
        future: Future = Future()
        self.controls.put((fn, future))
        return future

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._tick()
            except Exception as exc:
                log.exception("batch step failed")
                for row in self.rows:
                    if not row.job.future.done():
                        row.job.future.set_exception(exc)
                    self.runner.release(row)
                self.rows = []
            if self.after_tick is not None:
                self.after_tick()

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
            except Exception as exc:
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
        row = Row(job, Detokenizer(self.runner.tokenizer, job.stops), seq=self._next_seq)
        if job.resume is not None:
            row.last_token, row.generated = job.resume.token, 1
            row.detokenizer.ids, row.detokenizer.sent = list(job.resume.decoded), job.resume.sent
        try:
            row.fed = self.runner.start(row)
        except Exception as exc:
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
            ready_rows = logits if len(ready_logits) == len(segments) else logits[ready_logits]
            self._advance(ready, sample(ready_rows, ready))
        self._retire()
        self.seconds += time.perf_counter() - started

    def _advance(self, rows: list[Row], tokens: list[int]) -> None:
        for row, token in zip(rows, tokens):
            row.last_token, row.generated = token, row.generated + 1
            finished = token in self.runner.eos_ids
            if not finished:
                delta = row.detokenizer.add(token)
                if delta:
                    row.job.emit(delta)
            row.finish_reason = (
                "stop"
                if finished or row.detokenizer.stopped
                else "cancelled"
                if row.job.cancel.is_set()
                else "length"
                if row.generated >= row.job.max_new_tokens
                else "transfer"
                if row.job.export
                else None
            )

    def _retire(self) -> None:
        keep = []
        for row in self.rows:
            if row.finish_reason is None and row.job.cancel.is_set():
                row.finish_reason = "cancelled"
            if row.finish_reason is None:
                keep.append(row)
                continue
            tail = row.detokenizer.finish() if row.finish_reason not in ("cancelled", "transfer") else ""
            if tail:
                row.job.emit(tail)
            self.runner.release(row)
            row.job.future.set_result((row.generated, row.finish_reason))
        if len(keep) < len(self.rows):
            keep.sort(key=self.runner.rank)  # rows in KV-slot order: the runner's decode needs no gathers
        self.rows = keep
