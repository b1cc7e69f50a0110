"""The model in a process of its own. `ProcessGenerator` runs an `HFGenerator` (model, batch loop,
adapters) in a child process and speaks the `Generator` protocol to the server, so the event loop and
the batch loop never share a GIL.

Why: every torch op gives the GIL back and takes it again, and in one process the event loop
(websockets, JSON, the database) holds it while the batch thread waits. Measured on a 2-core CPU: a
thread busy 30% of the time on the *other* core slowed a 16-row decode step from 78 to 123 ms.

Messages over a socket pair as `multiprocessing` connections (pickled tuples):
  server → worker: (HFGenerator options, log level) first; then ("submit", rid, GenerationRequest) ·
                   ("cancel", rid) · ("call", cid, method, args) · ("close",)
  worker → server: ("ready", stats) or ("failed", reason) once; then ("out", [(rid, kind, value), ...], stats)
                   after every batch step that produced something (kind: "text", "done" with the
                   `GenerationResult`, "error" with the exception) and ("reply", cid, ok, value) for calls.
"""
from __future__ import annotations

import itertools
import logging
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path

from bot.generator import AdapterError, Busy, GenerationRequest, HFGenerator, ModelUnavailable

log = logging.getLogger(__name__)
CALLS = frozenset({"load_adapter", "unload_adapter"})  # what the server may call in the worker
POLL_SECONDS = 0.02  # how often the server's reader looks for cancelled requests when no message comes
START_TIMEOUT = 900.0


def portable(exc: BaseException) -> Exception:
    """An exception that survives pickling and keeps the types callers tell apart."""
    return exc if isinstance(exc, (AdapterError, Busy)) else RuntimeError(f"{type(exc).__name__}: {exc}")


# ---- the worker process -----------------------------------------------------------------------

def worker_main(fd: int) -> None:
    """The child process (`python -m bot.worker FD`): load the model, then serve the socket `FD`
    until the server closes it. The first message is the `HFGenerator` options and the log level."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the server, which closes the worker
    conn = Connection(fd)
    options, log_level = conn.recv()
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s[model]: %(message)s")
    generator = HFGenerator(**options)
    try:
        generator.load()
    except Exception as exc:  # noqa: BLE001 — reported to the server, which reports it in /readyz
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
        self.conn.send(("ready", self.generator.stats()))
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
        if kind == "submit":
            self._submit(key, rest[0])
        elif kind == "cancel" and key in self.cancels:
            self.cancels[key].set()
        elif kind == "call":
            self.calls.submit(self._call, key, *rest)

    def _submit(self, rid: int, request: GenerationRequest) -> None:
        cancel = self.cancels[rid] = threading.Event()
        try:
            future = self.generator.submit(request, lambda text: self._put(rid, "text", text), cancel)
        except Exception as exc:  # noqa: BLE001 — e.g. Busy: refused before it started (sent at the next tick)
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
        except Exception as exc:  # noqa: BLE001 — handed back to the caller
            value, ok = portable(exc), False
        with self.lock:
            self.conn.send(("reply", cid, ok, value))


# ---- the server side --------------------------------------------------------------------------

@dataclass
class _Request:
    emit: Callable[[str], None]
    cancel: threading.Event
    future: Future = field(default_factory=Future)
    cancel_sent: bool = False


class ProcessGenerator:
    """The `Generator` the server uses by default: an `HFGenerator` in a child process. Requests and
    adapter loads go over a socket pair; a reader thread delivers text deltas and results, and forwards
    cancellations. If the worker dies, every request in flight fails and `failure` says why."""

    def __init__(self, model_path: Path, device: str = "auto", max_batch: int = 16, max_queue: int = 64,
                 prefill_chunk: int = 256, threads: int = 0) -> None:
        self.capacity = max_batch + max_queue  # requests in flight before 'busy'; counted here, where
        # they are submitted (the worker's own queue may briefly hold them all before the batch takes some)
        self.options = {"model_path": Path(model_path), "device": device, "max_batch": max_batch,
                        "max_queue": self.capacity, "prefill_chunk": prefill_chunk, "threads": threads}
        self.failure: str | None = None
        self._requests: dict[int, _Request] = {}
        self._calls: dict[int, Future] = {}
        self._ids = itertools.count()
        self._stats: dict = {}
        self._lock = threading.Lock()
        self._conn = self._process = self._reader = None

    def load(self) -> None:
        """Start the worker (`python -m bot.worker`, not multiprocessing's spawn, which would re-run
        the server's main script) and wait until its model is loaded."""
        mine, theirs = socket.socketpair()
        self._process = subprocess.Popen([sys.executable, "-m", "bot.worker", str(theirs.fileno())],
                                         pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL)
        theirs.close()
        self._conn = Connection(mine.detach())
        self._conn.send((self.options, logging.getLogger().getEffectiveLevel()))
        kind, value = self._first_message()
        if kind != "ready":
            self._stop_process()
            raise RuntimeError(f"the model worker failed to load the model: {value}")
        self._stats = value
        self._reader = threading.Thread(target=self._read, name="supportloop-model-reader", daemon=True)
        self._reader.start()

    def _first_message(self) -> tuple:
        for _ in range(int(START_TIMEOUT)):
            if self._conn.poll(1.0):
                try:
                    return self._conn.recv()
                except EOFError:
                    break
            if self._process.poll() is not None:
                return "failed", f"the worker process ended (exit code {self._process.poll()})"
        return "failed", f"no word from the worker process in {START_TIMEOUT:.0f} s"

    def stats(self) -> dict:
        return dict(self._stats)

    def submit(self, request: GenerationRequest, emit: Callable[[str], None], cancel: threading.Event) -> Future:
        with self._lock:
            if self.failure:
                raise ModelUnavailable(self.failure)
            if len(self._requests) >= self.capacity:
                raise Busy(f"the server is at capacity ({self.capacity} requests in progress or waiting)")
            rid = next(self._ids)
            pending = self._requests[rid] = _Request(emit, cancel)
            self._conn.send(("submit", rid, request))
        return pending.future

    def load_adapter(self, version: str, path: Path) -> None:
        self._call("load_adapter", version, Path(path))

    def unload_adapter(self, version: str) -> None:
        self._call("unload_adapter", version)

    def _call(self, method: str, *args):
        future: Future = Future()
        with self._lock:
            if self.failure:
                raise ModelUnavailable(self.failure)
            cid = next(self._ids)
            self._calls[cid] = future
            self._conn.send(("call", cid, method, args))
        return future.result()

    def close(self) -> None:
        if self._process is None:
            return
        try:
            with self._lock:
                self._conn.send(("close",))
        except OSError:
            pass
        self._stop_process()
        self._conn.close()

    def _stop_process(self, grace: float = 15) -> None:
        try:
            self._process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(timeout=5)

    # ---- the reader thread ----------------------------------------------------------------------

    def _read(self) -> None:
        while True:
            try:
                if self._conn.poll(POLL_SECONDS):
                    self._dispatch(self._conn.recv())
                self._forward_cancels()
            except (EOFError, OSError):
                break
        try:
            code = self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            code = "none: it still runs"
        self._fail_all(f"the model worker stopped (exit code {code}); restart the server")

    def _dispatch(self, message: tuple) -> None:
        if message[0] == "out":
            _, items, self._stats = message
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
                except Exception:  # noqa: BLE001 — one listener's failure (e.g. its loop closed) is not everyone's
                    log.exception("could not deliver text of request %d", rid)
            return
        with self._lock:
            request = self._requests.pop(rid, None)
        if request is not None:
            request.future.set_result(value) if kind == "done" else request.future.set_exception(value)

    def _forward_cancels(self) -> None:
        with self._lock:
            for rid, request in self._requests.items():
                if request.cancel.is_set() and not request.cancel_sent:
                    request.cancel_sent = True
                    self._conn.send(("cancel", rid))

    def _fail_all(self, reason: str) -> None:
        with self._lock:
            self.failure = reason
            requests, self._requests = self._requests, {}
            calls, self._calls = self._calls, {}
        if requests or calls:
            log.error("%s; failing %d request(s) in flight", reason, len(requests) + len(calls))
        for future in [r.future for r in requests.values()] + list(calls.values()):
            future.set_exception(ModelUnavailable(reason))


if __name__ == "__main__":
    worker_main(int(sys.argv[1]))
