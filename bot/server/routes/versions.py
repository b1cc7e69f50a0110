"""The admin API for adapter versions (`base` is a version like the others):
`GET /api/admin/adapters` lists them with manifest metrics and live stats, and the running canary with
its verdict; `POST .../{version}/promote` and `POST .../rollback` change the active version;
`POST .../{version}/canary` `{"percent": N}` starts a canary (or changes its percentage) and
`POST .../canary/stop` ends it; `GET .../votes` counts thumbs per version over time. This server loads and validates the version before the store changes
(refused → 422 with the reason, nothing changes) and serves it at once; other servers on the same store
follow it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from datetime import datetime
from typing import Literal, TypeVar

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, Field

from bot.runtime.interface import AdapterError
from bot.server.deps import AdminDep, SessionDep
from feedback import canary, repo, versions
from feedback.db import Store
from feedback.models import AdapterActivation, Staff

router = APIRouter(prefix="/api/admin/adapters")
T = TypeVar("T")


class PromoteBody(BaseModel):
    force: bool = Field(False, description="serve a version the evaluation gate rejected (recorded with who forced it)")


class Activation(BaseModel):
    version: str
    previous: str
    action: str = Field(description="promote, rollback or publish")
    actor: str
    forced: bool
    created_at: datetime
    serving: str = Field(description="the version this server serves new requests with now")


class CanaryBody(BaseModel):
    percent: float = Field(gt=0, le=100, description="the share of new sessions the candidate answers, in %")
    force: bool = Field(False, description="also a version the evaluation gate rejected (recorded)")


@router.get("")
def list_adapters(request: Request, session: SessionDep, _admin: AdminDep) -> dict:
    return {
        "active": versions.active_version(session),
        "serving": request.app.state.adapters.active_version,
        "canary": _canary_report(session),
        "versions": versions.versions(session),
    }


def _canary_report(session) -> dict | None:
    running = repo.running_canary(session)
    if running is None:
        return None
    return canary.describe(running) | {
        "verdict": asdict(canary.evaluate(session, running)),
        "rule": {"alpha": canary.ALPHA, "min_votes": canary.MIN_VOTES},
    }


@router.get("/votes")
def votes(session: SessionDep, _admin: AdminDep, bucket: Literal["auto", "hour", "day"] = "auto") -> dict:
    """Thumbs up and down per version over time (for the thumbs-up-rate chart)."""
    return versions.votes_over_time(session, bucket=bucket)


@router.post("/canary/stop")
async def stop_canary(request: Request, admin: AdminDep) -> dict:
    store: Store = request.app.state.store
    stopped = await request.app.state.adapters.change(lambda: _apply(store, admin, canary.stop))
    return canary.describe(stopped)


@router.post("/{version}/canary")
async def start_canary(version: str, body: CanaryBody, request: Request, admin: AdminDep) -> dict:
    store: Store = request.app.state.store
    path = await asyncio.to_thread(_canary_path, store, version, body)
    manager = request.app.state.adapters
    started = await _refusable(
        version,
        manager.change(
            lambda: _apply(store, admin, canary.start, version, body.percent, force=body.force),
            version,
            manager.local_path(version, path),
        ),
    )
    return canary.describe(started)


@router.post("/{version}/promote", response_model=Activation)
async def promote(version: str, request: Request, admin: AdminDep, body: PromoteBody | None = None) -> Activation:
    force = body.force if body else False
    store: Store = request.app.state.store
    path = await asyncio.to_thread(_promotable_path, store, version, force)
    return await _switch(request, version, path, lambda: _apply(store, admin, versions.promote, version, force=force))


@router.post("/rollback", response_model=Activation)
async def rollback(request: Request, admin: AdminDep) -> Activation:
    store: Store = request.app.state.store
    target, path = await asyncio.to_thread(_rollback_target, store)
    return await _switch(request, target, path, lambda: _apply(store, admin, versions.rollback))


def _promotable_path(store: Store, version: str, force: bool) -> str | None:
    """The version's folder, after the store's rules allow the promotion (so nothing is loaded in vain)."""
    with store.session() as session:
        versions.check_promotion(session, version, force=force)
        return versions.path_of(session, version)


def _canary_path(store: Store, version: str, body: CanaryBody) -> str | None:
    with store.session() as session:
        canary.check_start(session, version, body.percent, force=body.force)
        return versions.path_of(session, version)


def _rollback_target(store: Store) -> tuple[str, str | None]:
    """The version a rollback goes back to, and its folder."""
    with store.session() as session:
        target = versions.rollback_target(session)
        return target, versions.path_of(session, target)


def _apply(store: Store, admin: Staff, change: Callable[..., AdapterActivation], *args, **kwargs) -> AdapterActivation:
    with store.session() as session:
        return change(session, *args, actor=admin, **kwargs)


async def _switch(
    request: Request, version: str, path: str | None, commit: Callable[[], AdapterActivation]
) -> Activation:
    manager = request.app.state.adapters
    activation = await _refusable(version, manager.change(commit, version, manager.local_path(version, path)))
    return Activation(
        **activation.model_dump(include={"version", "previous", "action", "actor", "forced", "created_at"}),
        serving=manager.active_version,
    )


async def _refusable(version: str, change: Awaitable[T]) -> T:
    try:
        return await change
    except AdapterError as exc:
        raise HTTPException(422, f"version {version} was refused, nothing changed: {exc}") from None
