"""Training-round bookkeeping in the store: runs (progress, snapshot, outcome), the lock that keeps
rounds from overlapping across processes and machines, and what changed since the previous round.

The lock is one `trainlock` row, taken by an INSERT (the primary key makes it atomic on SQLite and
PostgreSQL). A holder is stale when its process is gone (same host) or its heartbeat is older than
`stale_after`; the next round takes a stale lock over with a compare-and-set UPDATE and marks the dead
holder's run `abandoned`."""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import insert, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, func, select

from feedback.models import (
    FINISHED,
    Adapter,
    AdapterStatus,
    Correction,
    CorrectionStatus,
    Feedback,
    RunOutcome,
    Staff,
    TrainingRun,
    TrainLock,
    utcnow,
)
from feedback.repo import Conflict, NotFound, audit_action

ROUND_LOCK = "round"
HOST = socket.gethostname()


# runs ----------------------------------------------------------------------------------------------


def start_run(session: Session, *, config: dict[str, Any], outcome: RunOutcome = RunOutcome.running) -> TrainingRun:
    run = TrainingRun(config_json=json.dumps(config, default=str), outcome=outcome.value)
    session.add(run)
    session.commit()
    return run


def get_run(session: Session, *, run_id: int) -> TrainingRun:
    run = session.get(TrainingRun, run_id)
    if run is None:
        raise NotFound(f"no training run {run_id}")
    return run


def recent_runs(session: Session, *, limit: int = 10) -> list[TrainingRun]:
    """The newest training runs first."""
    return list(session.exec(select(TrainingRun).order_by(col(TrainingRun.id).desc()).limit(limit)))


def update_run(
    session: Session,
    *,
    run_id: int,
    log: str | None = None,
    progress: dict[str, Any] | None = None,
    snapshot_at: datetime | None = None,
    outcome: RunOutcome | None = None,
) -> TrainingRun:
    run = get_run(session, run_id=run_id)
    if log is not None:
        run.log = log
    if progress is not None:
        run.progress_json = json.dumps(progress)
    if snapshot_at is not None:
        run.snapshot_at = snapshot_at
    if outcome is not None:
        run.outcome = outcome.value
    session.add(run)
    session.commit()
    return run


def finish_run(
    session: Session, *, run_id: int, outcome: RunOutcome, log: str, adapter_version: str | None = None
) -> TrainingRun:
    run = get_run(session, run_id=run_id)
    run.outcome, run.log, run.adapter_version, run.finished_at = outcome.value, log, adapter_version, utcnow()
    session.add(run)
    session.commit()
    return run


# what is new since the previous round --------------------------------------------------------------


def active_snapshot(session: Session) -> datetime | None:
    """The snapshot time of the round that trained the active adapter (None: base, or unknown)."""
    active = session.exec(select(Adapter).where(Adapter.status == AdapterStatus.active)).first()
    if active is None:
        return None
    return session.exec(select(TrainingRun.snapshot_at).where(TrainingRun.adapter_version == active.version)).first()


def last_trained_snapshot(session: Session) -> datetime | None:
    """The snapshot time of the newest round that trained a candidate (published or rejected)."""
    done = (RunOutcome.published.value, RunOutcome.rejected.value)
    return session.exec(select(func.max(TrainingRun.snapshot_at)).where(col(TrainingRun.outcome).in_(done))).one()


def new_feedback_count(session: Session, *, since: datetime | None) -> int:
    """Votes and approved corrections changed at or after `since` (all of them when None)."""
    votes = select(func.count()).select_from(Feedback)
    corrections = select(func.count()).select_from(Correction).where(Correction.status == CorrectionStatus.approved)
    if since is not None:
        votes = votes.where(Feedback.updated_at >= since)
        corrections = corrections.where(Correction.updated_at >= since)
    return session.exec(votes).one() + session.exec(corrections).one()


# the lock --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Holder:
    run_id: int
    host: str
    pid: int
    heartbeat_at: datetime

    def describe(self) -> str:
        return f"run {self.run_id} (pid {self.pid} on {self.host}, last heartbeat {self.heartbeat_at:%H:%M:%S} UTC)"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _aware(when: datetime) -> datetime:
    return when if when.tzinfo else when.replace(tzinfo=utcnow().tzinfo)


def _stale(lock: TrainLock, stale_after: timedelta) -> bool:
    if lock.host == HOST and not _alive(lock.pid):
        return True
    return utcnow() - _aware(lock.heartbeat_at) > stale_after


def acquire_lock(
    session: Session, *, run_id: int, stale_after: timedelta = timedelta(minutes=2), name: str = ROUND_LOCK
) -> Holder | None:
    """Take the lock for `run_id`. Returns None when taken, else the live holder. A stale holder is
    replaced and its run marked abandoned (the caller cleans up what it left on disk)."""
    now = utcnow()
    try:
        session.exec(
            insert(TrainLock).values(
                name=name, run_id=run_id, host=HOST, pid=os.getpid(), acquired_at=now, heartbeat_at=now
            )
        )
        session.commit()
        return None
    except IntegrityError:
        session.rollback()
    lock = session.get(TrainLock, name, populate_existing=True)
    if lock is None:  # released meanwhile: try once more
        return acquire_lock(session, run_id=run_id, stale_after=stale_after, name=name)
    holder = Holder(lock.run_id, lock.host, lock.pid, _aware(lock.heartbeat_at))
    if not _stale(lock, stale_after):
        return holder
    taken = session.exec(
        update(TrainLock)
        .where(col(TrainLock.name) == name, col(TrainLock.run_id) == lock.run_id)
        .values(run_id=run_id, host=HOST, pid=os.getpid(), acquired_at=now, heartbeat_at=now)
    )
    _abandon(session, holder.run_id)
    session.commit()
    return None if taken.rowcount == 1 else holder


def _abandon(session: Session, run_id: int) -> None:
    run = session.get(TrainingRun, run_id)
    if run is not None and run.outcome not in {o.value for o in FINISHED}:
        run.outcome, run.finished_at = RunOutcome.abandoned.value, utcnow()
        run.log += "\nabandoned: the process running this round died; the next round cleaned up after it"
        session.add(run)


def heartbeat(session: Session, *, run_id: int, name: str = ROUND_LOCK) -> bool:
    """Refresh the lock; False when this run no longer holds it."""
    done = session.exec(
        update(TrainLock)
        .where(col(TrainLock.name) == name, col(TrainLock.run_id) == run_id)
        .values(heartbeat_at=utcnow())
    )
    session.commit()
    return done.rowcount == 1


def release_lock(session: Session, *, run_id: int, name: str = ROUND_LOCK) -> None:
    lock = session.get(TrainLock, name)
    if lock is not None and lock.run_id == run_id:
        session.delete(lock)
        session.commit()


def live_holder(
    session: Session, *, stale_after: timedelta = timedelta(minutes=2), name: str = ROUND_LOCK
) -> Holder | None:
    """The round holding the lock, unless it is stale (its process gone or its heartbeat old)."""
    lock = session.get(TrainLock, name, populate_existing=True)
    if lock is None or _stale(lock, stale_after):
        return None
    return Holder(lock.run_id, lock.host, lock.pid, _aware(lock.heartbeat_at))


def request_run(session: Session, *, actor: Staff, config: dict[str, Any]) -> TrainingRun:
    """A queued run for a round a staff member asked for (audited); Conflict while one is running."""
    holder = live_holder(session)
    if holder is not None:
        raise Conflict(
            f"a training round is already running: {holder.describe()}; "
            f"follow it at GET /api/admin/train/{holder.run_id}"
        )
    run = TrainingRun(config_json=json.dumps(config, default=str), outcome=RunOutcome.queued.value)
    session.add(run)
    session.flush()
    audit_action(session, actor, "train.start", f"run:{run.id}", **config)
    session.commit()
    return run
