"""The model in processes of its own. `ProcessGenerator` runs `HFGenerator`s (model, batch loop,
adapters) in child processes and speaks the `Generator` protocol to the server, so the event loop and
the batch loop never share a GIL. On CPUs a second worker prefills new requests (see `ProcessGenerator`).

Why: every torch op gives the GIL back and takes it again, and in one process the event loop
(websockets, JSON, the database) holds it while the batch thread waits, which slows every step even
when the event loop runs on another core (measured: docs/performance.md, "Serving").

Messages over a socket pair per worker as `multiprocessing` connections (pickled tuples):
  server → worker: (HFGenerator options, log level) first; then ("submit", rid, GenerationRequest,
                   prefill_only) · ("resume", rid, GenerationRequest, KVTransfer) · ("cancel", rid) ·
                   ("call", cid, method, args) · ("close",)
  worker → server: ("ready", stats, device) or ("failed", reason) once; then ("out", [(rid, kind, value),
                   ...], stats) after every batch step that produced something (kind: "text", "done" with
                   the `GenerationResult` or, from a prefill, the `KVTransfer` the server relays as "resume"
                   to the decode worker, "error" with the exception) and ("reply", cid, ok, value) for calls.
"""

from __future__ import annotations

import itertools
import logging
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path

from bot.runtime.generator import PROBE_TOKENS, UNLOAD_POLL_SECONDS, model_threads
from bot.runtime.hf_generator import HFGenerator
from bot.runtime.types import AdapterError, Busy, GenerationRequest, KVTransfer, ModelUnavailable

log = logging.getLogger(__name__)
CALLS = frozenset({"load_adapter", "try_unload_adapter"})  # what the server may call in the worker
POLL_SECONDS = 0.02  # how often the server's reader looks for cancelled requests when no message comes
START_TIMEOUT = 900.0


def portable(exc: BaseException) -> Exception:
    """An exception that survives pickling and keeps the types callers tell apart."""
    return exc if isinstance(exc, (AdapterError, Busy)) else RuntimeError(f"{type(exc).__name__}: {exc}")


# ---- the worker process -----------------------------------------------------------------------


def worker_main(fd: int) -> None:
    """The child process (`python -m bot.runtime.workers FD`): load the model, then serve the socket `FD`
    until the server closes it. The first message is the `HFGenerator` options and the log level."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the server, which closes the worker
    conn = Connection(fd)
    options, log_level = conn.recv()
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s[model]: %(message)s")
    generator = HFGenerator(**options)
    try:
        generator.load()
    except Exception as exc:
        log.exception("model failed to load")
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    WorkerLoop(conn, generator).serve()


class WorkerLoop:
    """Receives requests on the pipe; sends each batch step's text and results back as one message."""

    def __init__(self, conn, generator: HFGenerator) -> None:
        self.conn, self.generator = conn, generator
        self.lock = threading.Lock()  # one writer at a time on the pipe
        self.outbox: list[tuple[int, str, object]] = []
        self.cancels: dict[int, threading.Event] = {}
        self.calls = ThreadPoolExecutor(max_workers=2, thread_name_prefix="supportloop-call")
        generator.scheduler.after_tick = self.flush

    def serve(self) -> None:
        self.conn.send(("ready", self.generator.stats(), self.generator.device))
        try:
            while (message := self._receive()) is not None and message[0] != "close":
                self._handle(message)
        finally:
            self.generator.close()
            self.calls.shutdown(wait=False, cancel_futures=True)

    def _receive(self):
        try:
            return self.conn.recv()
        except (EOFError, OSError):  # the server is gone
            return None

    def _handle(self, message: tuple) -> None:
        kind, key, *rest = message
        if kind in ("submit", "resume"):
            self._submit(key, kind, *rest)
        elif kind == "cancel" and key in self.cancels:
            self.cancels[key].set()
        elif kind == "call":
            self.calls.submit(self._call, key, *rest)

    def _submit(self, rid: int, kind: str, request: GenerationRequest, extra) -> None:
        """`submit` (`extra`: prefill only, for a prefill worker) or `resume` (`extra`: the `KVTransfer`)."""
        cancel = self.cancels[rid] = threading.Event()
        emit = lambda text: self._put(rid, "text", text)  # noqa: E731
        try:
            future = (
                self.generator.submit(request, emit, cancel, prefill_only=extra)
                if kind == "submit"
                else self.generator.resume(request, extra, emit, cancel)
            )
        except Exception as exc:
            self._finished(rid, None, exc)
            return
        future.add_done_callback(lambda f: self._finished(rid, f, None))

    def _finished(self, rid: int, future: Future | None, error: BaseException | None) -> None:
        self.cancels.pop(rid, None)
        error = error or future.exception()
        self._put(rid, "error", portable(error)) if error else self._put(rid, "done", future.result())

    def _put(self, rid: int, kind: str, value) -> None:
        with self.lock:
            self.outbox.append((rid, kind, value))

    def flush(self) -> None:
        """Called by the batch loop after every tick: everything it produced, in one message."""
        with self.lock:
            if self.outbox:
                items, self.outbox = self.outbox, []
                self.conn.send(("out", items, self.generator.stats()))

    def _call(self, cid: int, method: str, args: tuple) -> None:
        try:
            if method not in CALLS:
                raise ValueError(f"unknown call {method!r}")
            value, ok = getattr(self.generator, method)(*args), True
        except Exception as exc:
            value, ok = portable(exc), False
        with self.lock:
            self.conn.send(("reply", cid, ok, value))


# ---- the server side --------------------------------------------------------------------------


def split_threads(setting: int, prefill: bool) -> tuple[int, int]:
    """CPU threads for the decode and the prefill worker: the model's share of the cores
    (`model_threads`), a third of it (at least one) to prefill. On 2 cores: one each; the prefill
    worker shares its core with the event loop, which is idle most of the time."""
    total = model_threads(setting)
    return (max(1, total - total // 3), max(1, total // 3)) if prefill else (total, 0)


def thread_counts(setting: int, prefill: bool) -> tuple[int, ...]:
    """Every CPU thread count the model runs at (decode, then prefill worker), once each."""
    return tuple(dict.fromkeys(n for n in split_threads(setting, prefill) if n))


@dataclass
class _Worker:
    """One model worker process, started as `python -m bot.runtime.workers FD` (not multiprocessing's spawn,
    which would re-run the server's main script), and what it last said about itself."""

    role: str  # "decode" or "prefill"
    options: dict
    stats: dict = field(default_factory=dict)
    device: str = ""
    conn: Connection | None = None
    process: subprocess.Popen | None = None

    def start(self) -> None:
        mine, theirs = socket.socketpair()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bot.runtime.workers", str(theirs.fileno())],
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
        )
        theirs.close()
        self.conn = Connection(mine.detach())
        self.conn.send((self.options, logging.getLogger().getEffectiveLevel()))

    def wait_ready(self) -> None:
        kind, *value = self._first_message()
        if kind != "ready":
            self.stop()
            raise RuntimeError(f"the model worker ({self.role}) failed to load the model: {value[0]}")
        self.stats, self.device = value

    def _first_message(self) -> tuple:
        for _ in range(int(START_TIMEOUT)):
            if self.conn.poll(1.0):
                try:
                    return self.conn.recv()
                except EOFError:
                    break
            if self.process.poll() is not None:
                return "failed", f"the worker process ended (exit code {self.process.poll()})"
        return "failed", f"no word from the worker process in {START_TIMEOUT:.0f} s"

    def stop(self, grace: float = 15) -> None:
        try:
            self.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)


@dataclass
class _Request:
    request: GenerationRequest
    emit: Callable[[str], None]
    cancel: threading.Event
    owner: _Worker  # the worker generating it now (the prefill worker hands it over to the decode worker)
    future: Future = field(default_factory=Future)
    cancel_sent_to: _Worker | None = None


class ProcessGenerator:
    """The `Generator` the server uses by default: the model in worker processes, each an `HFGenerator`.
    Requests and adapter loads go over socket pairs; a reader thread per worker delivers text deltas and
    results, and forwards cancellations. If a worker dies, every request in flight fails and `failure`
    says why.

    On CPUs a second worker prefills (disaggregated prefill): a new request's prompt is computed, and its
    first token sampled, by the prefill worker on a core of its own, which hands the prompt's KV over to
    the decode worker's batch. So a customer's first token does not wait for the running batch's step,
    and decode steps carry no prompt tokens. `prefill_process`: None = on where the model runs on a CPU."""

    def __init__(
        self,
        model_path: Path,
        device: str = "auto",
        max_batch: int = 16,
        max_queue: int = 64,
        prefill_chunk: int = 256,
        threads: int = 0,
        prefill_process: bool | None = None,
    ) -> None:
        self.capacity = max_batch + max_queue  # requests in flight before 'busy'; counted here, where
        # they are submitted (a worker's own queue may briefly hold them all before its batch takes some)
        self.options = {
            "model_path": Path(model_path),
            "device": device,
            "max_batch": max_batch,
            "max_queue": self.capacity,
            "prefill_chunk": prefill_chunk,
        }
        self.threads, self.prefill_process = threads, prefill_process
        self.failure: str | None = None
        self._requests: dict[int, _Request] = {}
        self._calls: dict[int, Future] = {}
        self._ids = itertools.count()
        self._lock = threading.Lock()  # the request table, and one writer at a time on each pipe
        self._decoder: _Worker | None = None
        self._prefiller: _Worker | None = None

    @property
    def _workers(self) -> list[_Worker]:
        return [w for w in (self._decoder, self._prefiller) if w is not None]

    def load(self) -> None:
        """Start the decode worker, then (on a CPU, unless turned off) the prefill worker, and wait
        until each has loaded the model."""
        decode_threads, prefill_threads = split_threads(self.threads, self.prefill_process is not False)
        self.options["pack_threads"] = thread_counts(self.threads, self.prefill_process is not False)
        self._decoder = _Worker("decode", {**self.options, "threads": decode_threads})
        self._decoder.start()
        self._decoder.wait_ready()
        if self.prefill_process or (self.prefill_process is None and self._decoder.device == "cpu"):
            self._prefiller = _Worker(
                "prefill", {**self.options, "device": self._decoder.device, "threads": prefill_threads}
            )
            self._prefiller.start()
            try:
                self._prefiller.wait_ready()
            except RuntimeError:
                self._prefiller.conn.close()
                self._prefiller = None
                self.close()
                raise
        for worker in self._workers:
            threading.Thread(
                target=self._read, args=(worker,), name=f"supportloop-{worker.role}-reader", daemon=True
            ).start()

    def stats(self) -> dict:
        stats = dict(self._decoder.stats) if self._decoder else {}
        if self._prefiller is not None:
            prefill = self._prefiller.stats
            for key in ("queue_depth", "prefill_tokens"):
                stats[key] = stats.get(key, 0) + prefill.get(key, 0)
            stats["prefill_steps"], stats["prefill_seconds"] = prefill.get("steps", 0), prefill.get("step_seconds", 0.0)
        return stats

    def submit(self, request: GenerationRequest, emit: Callable[[str], None], cancel: threading.Event) -> Future:
        with self._lock:
            if self.failure:
                raise ModelUnavailable(self.failure)
            if len(self._requests) >= self.capacity:
                raise Busy(f"the server is at capacity ({self.capacity} requests in progress or waiting)")
            rid, owner = next(self._ids), self._owner_for_new()
            pending = self._requests[rid] = _Request(request, emit, cancel, owner)
            owner.conn.send(("submit", rid, request, owner is self._prefiller))
        return pending.future

    def _owner_for_new(self) -> _Worker:
        """The prefill worker while the decode worker is generating (a new prompt would wait for its step
        and slow it down); the decode worker itself when it is idle (it starts at once, no KV transfer)."""
        busy = any(r.owner is self._decoder for r in self._requests.values())
        return self._prefiller if self._prefiller is not None and busy else self._decoder

    def load_adapter(self, version: str, path: Path) -> None:
        """Load (and probe) in every worker at once; refused by one → unloaded from the others. The
        prefill worker's probe stops after its first token, as its requests do (more would ride along
        its long prefill steps for seconds)."""
        futures = [
            (
                worker,
                self._send_call(
                    worker, "load_adapter", version, Path(path), 1 if worker is self._prefiller else PROBE_TOKENS
                ),
            )
            for worker in self._workers
        ]
        failures = [f.exception() for _, f in futures if f.exception() is not None]
        if failures:
            for worker, future in futures:
                if future.exception() is None:
                    self._unload_from(worker, version)
            raise failures[0]

    def unload_adapter(self, version: str) -> None:
        """Unload once drained, from the prefill worker first: the requests it hands over reach the decode
        worker's queue before its reply (one pipe, in order), so the decode worker then waits for them."""
        for worker in self._workers[::-1]:  # the prefill worker, then the decode worker
            self._unload_from(worker, version)

    def _unload_from(self, worker: _Worker, version: str) -> None:
        """The waiting for `version`'s requests happens here, not in a worker's call thread, which a load
        may need meanwhile."""
        while not self._call(worker, "try_unload_adapter", version):
            time.sleep(UNLOAD_POLL_SECONDS)

    def _call(self, worker: _Worker, method: str, *args):
        return self._send_call(worker, method, *args).result()

    def _send_call(self, worker: _Worker, method: str, *args) -> Future:
        future: Future = Future()
        with self._lock:
            if self.failure:
                raise ModelUnavailable(self.failure)
            cid = next(self._ids)
            self._calls[cid] = future
            worker.conn.send(("call", cid, method, args))
        return future

    def close(self) -> None:
        for worker in self._workers:
            try:
                with self._lock:
                    worker.conn.send(("close",))
            except OSError:
                pass
        for worker in self._workers:
            worker.stop()
            worker.conn.close()

    # ---- the reader threads ---------------------------------------------------------------------

    def _read(self, worker: _Worker) -> None:
        while True:
            try:
                if worker.conn.poll(POLL_SECONDS):
                    self._dispatch(worker, worker.conn.recv())
                self._forward_cancels()
            except (EOFError, OSError):
                break
        try:
            code = worker.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            code = "none: it still runs"
        self._fail_all(f"the model worker stopped ({worker.role}, exit code {code}); restart the server")

    def _dispatch(self, worker: _Worker, message: tuple) -> None:
        if message[0] == "out":
            _, items, worker.stats = message
            for rid, kind, value in items:
                self._deliver(rid, kind, value)
        elif message[0] == "reply":
            _, cid, ok, value = message
            future = self._calls.pop(cid)
            future.set_result(value) if ok else future.set_exception(value)

    def _deliver(self, rid: int, kind: str, value) -> None:
        if kind == "text":
            request = self._requests.get(rid)
            if request is not None:
                try:
                    request.emit(value)
                except Exception:
                    log.exception("could not deliver text of request %d", rid)
            return
        with self._lock:
            if isinstance(value, KVTransfer):  # prefilled: on to the decode worker's batch
                if rid in self._requests:
                    self._requests[rid].owner = self._decoder
                    self._decoder.conn.send(("resume", rid, self._requests[rid].request, value))
                return
            request = self._requests.pop(rid, None)
        if request is not None:
            request.future.set_result(value) if kind == "done" else request.future.set_exception(value)

    def _forward_cancels(self) -> None:
        with self._lock:
            for rid, request in self._requests.items():
                if request.cancel.is_set() and request.cancel_sent_to is not request.owner:
                    request.cancel_sent_to = request.owner
                    request.owner.conn.send(("cancel", rid))

    def _fail_all(self, reason: str) -> None:
        with self._lock:
            self.failure = self.failure or reason
            requests, self._requests = self._requests, {}
            calls, self._calls = self._calls, {}
        if requests or calls:
            log.error("%s; failing %d request(s) in flight", reason, len(requests) + len(calls))
        for future in [r.future for r in requests.values()] + list(calls.values()):
            future.set_exception(ModelUnavailable(reason))


if __name__ == "__main__":
    worker_main(int(sys.argv[1]))
