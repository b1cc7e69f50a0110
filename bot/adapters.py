"""The adapter manager: notices the active version in the store, validates and loads it, swaps.

Polling the store is the mechanism for now. A refused version is remembered and not retried; the
live version keeps serving and the reason is logged."""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from bot.engine import Engine
from bot.generator import AdapterError
from feedback import repo
from feedback.db import Store
from feedback.models import BASE_VERSION

log = logging.getLogger(__name__)


class AdapterManager:
    def __init__(self, engine: Engine, store: Store, adapters_dir: Path, poll_seconds: float,
                 on_swap: Callable[[str], None] = lambda _version: None) -> None:
        self.engine, self.store, self.on_swap = engine, store, on_swap
        self.adapters_dir, self.poll_seconds = Path(adapters_dir), poll_seconds
        self.active_version = BASE_VERSION
        self.refused: dict[str, str] = {}
        self.synced = False  # True once the store's active version has been looked at (and loaded)

    def _wanted(self) -> tuple[str, Path | None]:
        with self.store.session() as session:
            row = repo.active_adapter(session)
        if row is None:
            return BASE_VERSION, None
        local = self.adapters_dir / row.version
        return row.version, local if local.is_dir() else Path(row.path)

    async def sync_once(self) -> bool:
        """Swap to the store's active version if it changed; True when a swap happened."""
        version, path = await asyncio.to_thread(self._wanted)
        swapped = version != self.active_version and version not in self.refused and await self._load(version, path)
        if not self.synced:
            log.info("ready: serving adapter %s", self.active_version)
        self.synced = True
        return swapped

    async def _load(self, version: str, path: Path | None) -> bool:
        if path is not None:
            try:
                await self.engine.load_adapter(version, path)
            except AdapterError as exc:
                self.refused[version] = str(exc)
                log.error("refused adapter %s, still serving %s: %s", version, self.active_version, exc)
                return False
        previous, self.active_version = self.active_version, version
        self.on_swap(version)
        log.info("now serving adapter %s (was %s)", version, previous)
        if previous != BASE_VERSION:
            await self.engine.unload_adapter(previous)
        return True

    async def run(self) -> None:
        while True:
            try:
                await self.sync_once()
            except Exception:  # noqa: BLE001 — a store hiccup must not stop the watcher
                log.exception("adapter sync failed; retrying")
            await asyncio.sleep(self.poll_seconds)
