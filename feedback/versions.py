"""Adapter versions in the store: which one is active (`base` = no adapter), the versions with their
manifest metrics and live stats, promotion (a gate-rejected version only with `force`, recorded with
who forced it) and rollback to the previous active version. Every change is an `AdapterActivation`
row; the servers follow the store (`bot.runtime.adapter_manager`)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import ColumnElement
from sqlmodel import Session, col, func, select
from sqlmodel.sql.expression import Select

from feedback.models import Adapter, AdapterActivation, AdapterStatus, Feedback, Message, Role, Staff, Thumb
from feedback.registry import BASE_VERSION
from feedback.repo import (
    Conflict,
    NotFound,
    active_adapter,
    active_version,
    audit_action,
    end_canary,
    lock_versions,
    running_canary,
    set_active,
)


def check_promotion(session: Session, version: str, *, force: bool = False) -> bool:
    """Raise if `version` may not be promoted: unknown (NotFound), already active, or rejected by the
    gate without `force` (Conflict). Returns whether the promotion forces a rejected version."""
    adapter = None if version == BASE_VERSION else _adapter(session, version)
    if version == active_version(session):
        raise Conflict(f"{version} is already the active version")
    rejected = adapter is not None and adapter.status == AdapterStatus.rejected
    if rejected and not force:
        raise Conflict(f"{version} was rejected by the evaluation gate; promote it with force to serve it anyway")
    return rejected


def promote(session: Session, version: str, *, actor: str | Staff, force: bool = False) -> AdapterActivation:
    """Make `version` active (see `check_promotion` for what is refused; nothing changes then). `actor`:
    a staff member (also written to the audit trail) or a name such as 'cli'."""
    lock_versions(session)
    forced = check_promotion(session, version, force=force)
    return _commit(session, set_active(session, version, action="promote", forced=forced, **actor_fields(actor)), actor)


def rollback_target(session: Session) -> str:
    """The version that was active before the active one (Conflict if there was none)."""
    current = active_version(session)
    last = session.exec(
        select(AdapterActivation).where(AdapterActivation.version == current).order_by(col(AdapterActivation.id).desc())
    ).first()
    if last is None or last.previous == current:
        raise Conflict("there is no previous version to roll back to")
    return last.previous


def rollback(session: Session, *, actor: str | Staff) -> AdapterActivation:
    """Make the previously active version active again (Conflict if there is none)."""
    lock_versions(session)
    return _commit(
        session, set_active(session, rollback_target(session), action="rollback", **actor_fields(actor)), actor
    )


def actor_fields(actor: str | Staff) -> dict[str, Any]:
    """The `actor` (a name) and `staff_id` (None unless a staff member) columns of a change by `actor`."""
    return {"actor": actor.name, "staff_id": actor.id} if isinstance(actor, Staff) else {"actor": actor}


def _commit(session: Session, activation: AdapterActivation, actor: str | Staff) -> AdapterActivation:
    """One transaction: the change, its history row, the end of a canary of the version that is now
    active (outcome `promoted`) and, for staff, the audit trail."""
    canary = running_canary(session)
    if canary is not None and canary.version == activation.version:
        end_canary(session, canary, outcome="promoted", by=activation.actor)
    if isinstance(actor, Staff):
        audit_action(
            session,
            actor,
            f"adapter.{activation.action}",
            activation.version,
            previous=activation.previous,
            forced=activation.forced,
        )
    session.commit()
    session.refresh(activation)
    return activation


def path_of(session: Session, version: str) -> str | None:
    """Where an adapter's files are (None for `base`); NotFound for an unknown version."""
    return None if version == BASE_VERSION else _adapter(session, version).path


def versions(session: Session) -> list[dict[str, Any]]:
    """`base` and every adapter, newest first after base: status, parent, metrics, live stats (answers
    served, thumbs up and down, thumbs-up rate), and the percentage of new sessions it answers as the
    running canary (None when it is not one)."""
    stats = _live_stats(session)
    active = active_version(session)
    rows: list[dict[str, Any]] = [
        {
            "version": BASE_VERSION,
            "status": "active" if active == BASE_VERSION else "available",
            "parent": None,
            "created_at": None,
            "activated_at": None,
            "metrics": {},
            "datasets": {},
        }
    ]
    for adapter in session.exec(select(Adapter).order_by(col(Adapter.created_at).desc(), col(Adapter.id).desc())):
        rows.append(
            {
                "version": adapter.version,
                "status": adapter.status.value,
                "parent": adapter.parent,
                "created_at": adapter.created_at,
                "activated_at": adapter.activated_at,
                "metrics": json.loads(adapter.metrics_json),
                "datasets": json.loads(adapter.datasets_json),
            }
        )
    canary = running_canary(session)
    for row in rows:
        row["live"] = stats.get(row["version"], _rate(0, 0, 0))
        row["canary_percent"] = canary.percent if canary is not None and canary.version == row["version"] else None
    return rows


def _adapter(session: Session, version: str) -> Adapter:
    adapter = session.exec(select(Adapter).where(Adapter.version == version)).first()
    if adapter is None:
        raise NotFound(f"unknown adapter version {version!r}")
    return adapter


def _voted_answers(*columns: Any) -> Select[*tuple[Any, ...]]:
    """`columns` of the assistant answers that have a vote (Message joined with its Feedback)."""
    query: Select[*tuple[Any, ...]] = select(*columns)
    return query.join(Feedback, col(Feedback.message_id) == Message.id).where(Message.role == Role.assistant)


def vote_counts(session: Session, *where: ColumnElement[bool]) -> dict[tuple[str | None, Thumb], int]:
    """Votes on answers by (adapter version, thumb), over the answers matching the `where` clauses."""
    query = (
        _voted_answers(Message.adapter_version, Feedback.thumb, func.count())
        .where(*where)
        .group_by(Message.adapter_version, Feedback.thumb)
    )
    return {(version, thumb): count for version, thumb, count in session.exec(query).all()}


def _live_stats(session: Session) -> dict[str, dict[str, Any]]:
    answers = dict(
        session.exec(
            select(Message.adapter_version, func.count())
            .where(Message.role == Role.assistant)
            .group_by(Message.adapter_version)
        ).all()
    )
    votes = vote_counts(session)
    return {
        version: _rate(count, votes.get((version, Thumb.up), 0), votes.get((version, Thumb.down), 0))
        for version, count in answers.items()
        if version is not None
    }


def _rate(messages: int, up: int, down: int) -> dict[str, Any]:
    return {
        "messages": messages,
        "thumbs_up": up,
        "thumbs_down": down,
        "thumbs_up_rate": round(up / (up + down), 4) if up + down else None,
    }


@dataclass(frozen=True)
class Target:
    version: str
    path: str | None  # None for `base`


@dataclass(frozen=True)
class CanaryTarget(Target):
    id: int
    percent: float
    started_at: datetime


@dataclass(frozen=True)
class ServingState:
    """What servers should serve: the active version, the running canary, and the newest candidates
    (loaded ahead so that promoting one only flips the version)."""

    active: Target
    canary: CanaryTarget | None
    candidates: tuple[Target, ...]


def serving_state(session: Session, *, candidates: int) -> ServingState:
    active = active_adapter(session)
    canary = running_canary(session)
    newest: Iterable[Adapter] = (
        session.exec(
            select(Adapter)
            .where(Adapter.status == AdapterStatus.candidate)
            .order_by(col(Adapter.created_at).desc(), col(Adapter.id).desc())
            .limit(candidates)
        )
        if candidates
        else []
    )
    return ServingState(
        active=Target(BASE_VERSION, None) if active is None else Target(active.version, active.path),
        canary=None
        if canary is None
        else CanaryTarget(
            canary.version,
            path_of(session, canary.version),
            cast(int, canary.id),  # a stored row: it has an id
            canary.percent,
            canary.started_at,
        ),
        candidates=tuple(Target(a.version, a.path) for a in newest),
    )


def votes_over_time(session: Session, *, bucket: str = "auto") -> dict[str, Any]:
    """Thumbs up and down per adapter version per time bucket (by the time of the answer, UTC):
    `{"bucket": "hour" | "day", "series": {version: [{"t": start, "up": n, "down": n}, ...]}}`. `auto`
    takes hours when the votes span at most three days, else days."""
    first, last = session.exec(_voted_answers(func.min(Message.created_at), func.max(Message.created_at))).one()
    if bucket == "auto":
        bucket = "hour" if first is None or (last - first).total_seconds() <= 3 * 86400 else "day"
    start = _bucket_start(session.get_bind().dialect.name, bucket)
    query = (
        _voted_answers(Message.adapter_version, start, Feedback.thumb, func.count())
        .where(col(Message.adapter_version).is_not(None))
        .group_by(Message.adapter_version, start, Feedback.thumb)
        .order_by(start)
    )
    series: dict[str, dict[str, dict[str, Any]]] = {}
    for version, t, thumb, count in session.exec(query).all():
        point = series.setdefault(version, {}).setdefault(t, {"t": t, "up": 0, "down": 0})
        point[thumb.value if isinstance(thumb, Thumb) else thumb] += count
    return {"bucket": bucket, "series": {v: list(points.values()) for v, points in series.items()}}


def _bucket_start(dialect: str, bucket: str) -> ColumnElement[str]:
    """The start of an answer's hour or day as ISO 8601 text (UTC), in the store's SQL dialect."""
    if bucket not in ("hour", "day"):
        raise ValueError(f"bucket must be auto, hour or day, got {bucket!r}")
    if dialect == "postgresql":
        utc = func.timezone("UTC", Message.created_at)
        return func.to_char(func.date_trunc(bucket, utc), 'YYYY-MM-DD"T"HH24:00:00"Z"')
    return func.strftime("%Y-%m-%dT%H:00:00Z" if bucket == "hour" else "%Y-%m-%dT00:00:00Z", Message.created_at)
