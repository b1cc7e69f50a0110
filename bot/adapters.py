"""The adapter manager: notices the active version in the store, validates and loads it, swaps.

Polling the store is the mechanism for now. A refused version is remembered and not retried; the
live version keeps serving and the reason is logged. A promotion or rollback through this server's
admin API (`switch`) loads and validates the version *before* the store changes, so a refused one
changes nothing, and swaps at once instead of at the next poll."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from bot.engine import Engine
from bot.generator import AdapterError
from feedback import repo
from feedback.db import Store
from feedback.models import BASE_VERSION

log = logging.getLogger(__name__)
T = TypeVar("T")


class AdapterManager:
    def __init__(self, engine: Engine, store: Store, adapters_dir: Path, poll_seconds: float,
                 on_swap: Callable[[str, float], None] = lambda _version, _seconds: None) -> None:
        self.engine, self.store, self.on_swap = engine, store, on_swap
        self.adapters_dir, self.poll_seconds = Path(adapters_dir), poll_seconds
        self.active_version = BASE_VERSION
        self.refused: dict[str, str] = {}
        self.synced = False  # True once the store's active version has been looked at (and loaded)
        self.lock = asyncio.Lock()  # one change of version at a time (the poll, or the admin API)
        self.retiring: dict[str, asyncio.Task] = {}  # versions being unloaded once their requests are done

    def _wanted(self) -> tuple[str, Path | None]:
        with self.store.session() as session:
            row = repo.active_adapter(session)
        return (BASE_VERSION, None) if row is None else (row.version, self.local_path(row.version, row.path))

    def local_path(self, version: str, path: str | None) -> Path | None:
        """This server's copy of an adapter's folder if it has one, else the registered path."""
        if path is None:
            return None
        local = self.adapters_dir / version
        return local if local.is_dir() else Path(path)

    async def sync_once(self) -> bool:
        """Swap to the store's active version if it changed; True when a swap happened."""
        async with self.lock:
            version, path = await asyncio.to_thread(self._wanted)
            swapped = version != self.active_version and version not in self.refused and await self._load(version, path)
        if not self.synced:
            log.info("ready: serving adapter %s", self.active_version)
        self.synced = True
        return swapped

    async def switch(self, version: str, path: Path | None, commit: Callable[[], T]) -> T:
        """Load and validate `version` (AdapterError: refused, nothing changed), then `commit` the change
        to the store (in a thread) and serve it; if the commit fails, the version is unloaded again."""
        async with self.lock:
            started = time.perf_counter()
            load = path is not None and version != self.active_version
            if load:
                await self._loadable(version)
                await self.engine.load_adapter(version, path)
            try:
                result = await asyncio.to_thread(commit)
            except BaseException:
                if load:
                    await self.engine.unload_adapter(version)
                raise
            self.refused.pop(version, None)
            await self._serve(version, started)
            return result

    async def _load(self, version: str, path: Path | None) -> bool:
        started = time.perf_counter()
        if path is not None:
            await self._loadable(version)
            try:
                await self.engine.load_adapter(version, path)
            except AdapterError as exc:
                self.refused[version] = str(exc)
                log.error("refused adapter %s, still serving %s: %s", version, self.active_version, exc)
                return False
        await self._serve(version, started)
        return True

    async def _serve(self, version: str, started: float) -> None:
        """New requests go to `version` (already loaded); the previous version is unloaded once the
        requests still using it are done. `on_swap` hears how long the swap took from `started`."""
        previous, self.active_version = self.active_version, version
        if previous == version:
            return
        self.on_swap(version, time.perf_counter() - started)
        log.info("now serving adapter %s (was %s)", version, previous)
        if previous != BASE_VERSION:  # in the background: the next swap need not wait for the drain
            self.retiring[previous] = asyncio.create_task(self._unload(previous))

    async def _unload(self, version: str) -> None:
        try:
            await self.engine.unload_adapter(version)
        except Exception:  # noqa: BLE001 — logged; the version stays loaded, which is harmless
            log.exception("could not unload adapter %s", version)
        finally:
            self.retiring.pop(version, None)

    async def _loadable(self, version: str) -> None:
        """A version being unloaded is loaded again only once that is done."""
        task = self.retiring.get(version)
        if task is not None:
            await asyncio.shield(task)

    async def run(self) -> None:
        """Follow the store: poll every `poll_seconds`, and on PostgreSQL also wake at once when any
        process changes the active version (LISTEN/NOTIFY)."""
        wake = asyncio.Event()
        listener = asyncio.create_task(listen(self.store.url, wake)) if self.store.url.startswith("postgresql") else None
        try:
            while True:
                try:
                    await self.sync_once()
                except Exception:  # noqa: BLE001 — a store hiccup must not stop the watcher
                    log.exception("adapter sync failed; retrying")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), self.poll_seconds)
                wake.clear()
        finally:
            if listener is not None:
                listener.cancel()


async def listen(url: str, wake: asyncio.Event, retry_seconds: float = 5.0) -> None:
    """Set `wake` whenever the store announces a change of active version (PostgreSQL NOTIFY on
    `repo.ADAPTER_CHANNEL`); reconnects after a lost connection (polling covers the gap)."""
    import psycopg
    from sqlalchemy.engine import make_url

    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    while True:
        try:
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                await conn.execute(f"LISTEN {repo.ADAPTER_CHANNEL}")
                wake.set()  # catch up on anything missed while not listening
                async for _ in conn.notifies():
                    wake.set()
        except (psycopg.Error, OSError) as exc:
            log.warning("adapter change notifications lost (%s); polling until reconnected", exc)
            await asyncio.sleep(retry_seconds)
