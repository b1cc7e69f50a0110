"""Group commit for customers' votes: votes that arrive together are stored in one transaction, so a
burst of thumbs costs one commit (one fsync on SQLite) and one hop to a worker thread, instead of one
each. A caller gets its answer only after its vote is committed: nothing is acknowledged that is not
stored. Lives on the server's event loop; the database work runs in a thread."""

from __future__ import annotations

import asyncio
import logging

from feedback.db import Store
from feedback.repo import Vote, record_votes

log = logging.getLogger(__name__)


class VoteWriter:
    def __init__(self, store: Store, max_batch: int = 512) -> None:
        self.store, self.max_batch = store, max_batch
        self.pending: list[tuple[Vote, asyncio.Future[Vote]]] = []
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="supportloop-votes")

    async def submit(self, vote: Vote) -> Vote:
        """The vote once stored; raises the NotFound / Invalid that refused it, or the database error."""
        future: asyncio.Future[Vote] = asyncio.get_running_loop().create_future()
        self.pending.append((vote, future))
        self._wake.set()
        return await future

    async def close(self, timeout: float = 10.0) -> None:
        """Write the votes already accepted (for at most `timeout` seconds), then stop."""
        deadline = asyncio.get_running_loop().time() + timeout
        while self.pending and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self.pending:
                batch, self.pending = self.pending[: self.max_batch], self.pending[self.max_batch :]
                await self._write(batch)

    async def _write(self, batch: list[tuple[Vote, asyncio.Future[Vote]]]) -> None:
        try:
            outcomes = await asyncio.to_thread(self._store, [vote for vote, _ in batch])
        except Exception as exc:
            log.warning("storing %d votes failed: %s", len(batch), exc.__class__.__name__)
            outcomes = [exc] * len(batch)
        for (_, future), outcome in zip(batch, outcomes):
            if future.done():  # the caller went away
                continue
            if isinstance(outcome, Exception):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)

    def _store(self, votes: list[Vote]) -> list[Vote | Exception]:
        with self.store.session() as session:
            return record_votes(session, votes)
