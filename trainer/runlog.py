"""A running round's log and progress, kept in the store while it runs (so `GET /api/admin/train/{id}`
can follow it) and the round lock's heartbeat."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable

from feedback.failpoints import failpoint
from feedback.rounds import heartbeat, update_run

_STEP = re.compile(r"^step (\d+)/(\d+) ")


class RunLog:
    """`record(line)` logs a line; `phase(name)` names what the round is doing. Writes to the run row
    at most every `flush_seconds`, and a heartbeat thread keeps the lock fresh."""

    def __init__(
        self,
        store,
        run_id: int,
        echo: Callable[[str], None],
        flush_seconds: float = 1.0,
        heartbeat_seconds: float = 15.0,
    ) -> None:
        self.store, self.run_id, self.echo = store, run_id, echo
        self.lines: list[str] = []
        self.progress: dict = {"phase": "starting"}
        self.flush_seconds, self.heartbeat_seconds = flush_seconds, heartbeat_seconds
        self.lost_lock = False
        self._flushed, self._lock, self._stop = 0.0, threading.Lock(), threading.Event()
        self._beat = threading.Thread(target=self._beats, name="round-heartbeat", daemon=True)

    def __enter__(self) -> RunLog:
        self._beat.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._beat.join()

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def __call__(self, line: str) -> None:
        self.echo(line)
        step = _STEP.match(line)
        with self._lock:
            self.lines.append(line)
            if step:
                self.progress.update(step=int(step.group(1)), steps=int(step.group(2)))
        self.flush(force=False)

    def phase(self, name: str) -> None:
        with self._lock:
            self.progress = {"phase": name}
        self.flush(force=True)
        failpoint(f"phase:{name}")

    def flush(self, force: bool = True) -> None:
        if not force and time.monotonic() - self._flushed < self.flush_seconds:
            return
        with self._lock:
            text, progress = self.text, dict(self.progress)
            self._flushed = time.monotonic()
        with self.store.session() as session:
            update_run(session, run_id=self.run_id, log=text, progress=progress)

    def _beats(self) -> None:
        while not self._stop.wait(self.heartbeat_seconds):
            try:
                with self.store.session() as session:
                    if not heartbeat(session, run_id=self.run_id):
                        self.lost_lock = True
                self.flush()
            except Exception:
                pass
