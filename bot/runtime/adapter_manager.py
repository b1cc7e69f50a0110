"""The adapter manager: follows what the store says to serve (the active version, a canary, new
candidates), validates and loads versions, swaps, and applies the canary rule.

Versions are loaded next to each other under their own names: the active one, the canary, the newest
candidates (loaded ahead, so promoting one only flips the version) and recently used ones (so a rollback
is a flip too), up to `max_loaded`; beyond that the least recently used go, never the active version,
the canary or a preloaded candidate, once the requests using them are done. A refused version is
remembered and not retried by the poll; the live version keeps serving and the reason is logged. A
change through this server's admin API (`change`) loads and validates the version *before* the store
changes, so a refused one changes nothing, and applies it at once instead of at the next poll."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TypeVar

from bot.runtime.bridge import GenerationBridge
from bot.runtime.types import AdapterError
from feedback import canary, repo, versions
from feedback.db import Store, notifications
from feedback.registry import BASE_VERSION
from feedback.versions import CanaryTarget, ServingState, Target

log = logging.getLogger(__name__)
T = TypeVar("T")


def in_canary(target: CanaryTarget, session_id: str, session_started: datetime) -> bool:
    """Whether a session goes to the canary: started since the canary did, and in its share of sessions
    by a hash of the canary and session ids (so a session keeps its version while the canary runs and a
    higher percentage keeps the sessions already in it)."""
    digest = hashlib.blake2b(f"{target.id}:{session_id}".encode(), digest_size=8).digest()
    return session_started >= target.started_at and int.from_bytes(digest) % 10_000 < target.percent * 100


class AdapterManager:
    def __init__(
        self,
        bridge: GenerationBridge,
        store: Store,
        adapters_dir: Path,
        poll_seconds: float,
        max_loaded: int = 4,
        on_swap: Callable[[str, float], None] = lambda _version, _seconds: None,
        on_canary_rollback: Callable[[], None] = lambda: None,
    ) -> None:
        self.bridge, self.store, self.on_swap, self.on_canary_rollback = bridge, store, on_swap, on_canary_rollback
        self.adapters_dir, self.poll_seconds, self.max_loaded = Path(adapters_dir), poll_seconds, max_loaded
        self.active_version = BASE_VERSION
        self.canary: CanaryTarget | None = None
        self.loaded: OrderedDict[str, None] = OrderedDict()  # versions in the generator, least recently used first
        self.refused: dict[str, str] = {}
        self.synced = False  # True once the store's active version has been looked at (and loaded)
        self.lock = asyncio.Lock()  # one change at a time (the poll, or the admin API)
        self.retiring: dict[str, asyncio.Task] = {}  # versions being unloaded once their requests are done
        self.loading: dict[str, asyncio.Task] = {}  # versions being loaded and validated
        self.preloads: set[asyncio.Task] = set()  # candidates being loaded ahead
        self.wake = asyncio.Event()  # set when the store announces a change: the watcher looks at once

    def version_for(self, session_id: str, session_started: datetime) -> str:
        """The version answering the next message of a session: the canary's for its share of the
        sessions started since it began, else the active one."""
        target = self.canary
        version = target.version if target and in_canary(target, session_id, session_started) else self.active_version
        if version in self.loaded:
            self.loaded.move_to_end(version)
        return version

    def _state(self) -> ServingState:
        with self.store.session() as session:
            return versions.serving_state(session, candidates=max(0, self.max_loaded - 2))

    def local_path(self, version: str, path: str | None) -> Path | None:
        """This server's copy of an adapter's folder if it has one, else the registered path."""
        if path is None:
            return None
        local = self.adapters_dir / version
        return local if local.is_dir() else Path(path)

    async def sync_once(self) -> bool:
        """Serve what the store says, then load new candidates ahead (outside the lock: a promotion
        need not wait for them); True when the active version changed."""
        async with self.lock:
            started = time.perf_counter()
            state = await asyncio.to_thread(self._state)
            swapped = await self._apply(state, started)
        if not self.synced:
            log.info("ready: serving adapter %s", self.active_version)
        self.synced = True
        self._preload(state)
        return swapped

    async def change(self, commit: Callable[[], T], version: str | None = None, path: Path | None = None) -> T:
        """Load and validate `version` if it is not loaded (AdapterError: refused, nothing changed), then
        `commit` the change to the store (in a thread) and serve what the store says now."""
        async with self.lock:
            started = time.perf_counter()
            if version is not None and path is not None and version not in self.loaded:
                await self._load(version, path)
            result = await asyncio.to_thread(commit)
            self.refused.pop(version, None)
            await self._apply(await asyncio.to_thread(self._state), started)
            return result

    async def _apply(self, state: ServingState, started: float) -> bool:
        swapped = state.active.version != self.active_version and await self._ensure(state.active)
        if swapped:
            self._serve(state.active.version, started)
        self._set_canary(state.canary if state.canary and await self._ensure(state.canary) else None)
        self._evict(self._keep(state))
        return swapped

    def _preload(self, state: ServingState) -> None:
        """Start loading the newest candidates that fit, side by side and in the background (the next
        poll must not wait for them), so that promoting one only flips the version."""
        keep = self._keep(state)
        slots = self.max_loaded - len(self.loaded) - len(self.loading) + sum(v not in keep for v in self.loaded)
        waiting = [
            t
            for t in state.candidates
            if t.version not in self.loaded and t.version not in self.loading and t.version not in self.refused
        ]
        for target in waiting[: max(0, slots)]:
            task = asyncio.create_task(self._preload_one(target, state))
            self.preloads.add(task)
            task.add_done_callback(self.preloads.discard)

    async def _preload_one(self, target: Target, state: ServingState) -> None:
        try:
            if await self._ensure(target):
                self._evict(self._keep(state))
        except Exception:
            log.exception("could not preload adapter %s", target.version)

    def _keep(self, state: ServingState) -> set[str]:
        """The versions that stay loaded: the active one, the canary, the newest candidates."""
        canary = {self.canary.version} if self.canary else set()
        return {self.active_version, *canary, *(target.version for target in state.candidates)}

    async def _ensure(self, target: Target) -> bool:
        """Whether `target` can serve: `base`, loaded, or loaded now (False if refused, now or before)."""
        if target.version == BASE_VERSION or target.version in self.loaded:
            return True
        if target.version in self.refused:
            return False
        try:
            await self._load(target.version, self.local_path(target.version, target.path))
        except AdapterError as exc:
            self.refused[target.version] = str(exc)
            log.error("refused adapter %s, still serving %s: %s", target.version, self.active_version, exc)
            return False
        return True

    async def _load(self, version: str, path: Path) -> None:
        """Load `version`, or wait for the load already under way (a preload, when it is promoted)."""
        task = self.loading.get(version)
        if task is None:
            task = self.loading[version] = asyncio.create_task(self._load_now(version, path))
            task.add_done_callback(lambda _task: self.loading.pop(version, None))
        await asyncio.shield(task)

    async def _load_now(self, version: str, path: Path) -> None:
        retiring = self.retiring.get(version)  # a version being unloaded is loaded again only once that is done
        if retiring is not None:
            await asyncio.shield(retiring)
        started = time.perf_counter()
        await self.bridge.load_adapter(version, path)
        self.loaded[version] = None
        log.info("adapter %s ready to serve (%.2f s)", version, time.perf_counter() - started)

    def _serve(self, version: str, started: float) -> None:
        """New requests go to `version` (already loaded); `on_swap` hears how long it took from `started`."""
        previous, self.active_version = self.active_version, version
        self.on_swap(version, time.perf_counter() - started)
        log.info("now serving adapter %s (was %s)", version, previous)

    def _set_canary(self, target: CanaryTarget | None) -> None:
        if target != self.canary:
            log.info(
                "canary: %s", "none" if target is None else f"{target.version} for {target.percent:g} % of new sessions"
            )
        self.canary = target

    def _evict(self, keep: set[str]) -> None:
        """Unload the least recently used versions beyond `max_loaded`, in the background (each once the
        requests using it are done), never one in `keep`."""
        excess = len(self.loaded) - self.max_loaded
        for version in [v for v in self.loaded if v not in keep][: max(0, excess)]:
            del self.loaded[version]
            self.retiring[version] = asyncio.create_task(self._unload(version))

    async def _unload(self, version: str) -> None:
        try:
            await self.bridge.unload_adapter(version)
        except Exception:
            log.exception("could not unload adapter %s", version)
        finally:
            self.retiring.pop(version, None)

    def _judge_canary(self) -> bool:
        with self.store.session() as session:
            return canary.auto_rollback(session) is not None

    async def run(self) -> None:
        """Follow the store: poll every `poll_seconds`, and on PostgreSQL also wake at once when any
        process changes what is served (LISTEN/NOTIFY); apply the canary rule at every poll."""
        listener = (
            asyncio.create_task(listen(self.store.url, self.wake)) if self.store.url.startswith("postgresql") else None
        )
        try:
            while True:
                try:
                    await self.sync_once()
                    if self.canary is not None and await asyncio.to_thread(self._judge_canary):
                        self.on_canary_rollback()
                        continue  # serve without it at once
                except Exception:
                    log.exception("adapter sync failed; retrying")
                await self._sleep()
        finally:
            for task in [listener, *self.preloads]:
                if task is not None:
                    task.cancel()

    async def _sleep(self) -> None:
        """Wait for a change notification, or `poll_seconds`. Not `asyncio.wait_for`: on Python 3.11 it
        swallows a cancel that comes in the same loop turn as the notification, and the server's shutdown
        would then wait for this watcher forever."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.poll_seconds):
                await self.wake.wait()
        self.wake.clear()


async def listen(url: str, wake: asyncio.Event, retry_seconds: float = 5.0) -> None:
    """Set `wake` whenever the store announces a change of active version (PostgreSQL NOTIFY on
    `repo.ADAPTER_CHANNEL`), and on (re)connecting, to catch up (polling covers the gaps)."""
    what = "adapter change notifications (polling until reconnected)"
    async with contextlib.aclosing(notifications(url, repo.ADAPTER_CHANNEL, what, retry_seconds)) as notes:
        async for _ in notes:
            wake.set()
