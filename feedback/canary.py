"""Canaries: a candidate version answers `percent` % of the sessions started while it runs, and is
rolled back automatically when its answers are significantly more often thumbed down than the active
version's.

The rule (`judge`): over the votes on answers given since the canary started, by the canary and by the
active version, a one-sided Fisher exact test of "the canary's thumbs-down rate is higher" rejects at
α = 0.05, once each side has at least 20 votes. Servers apply it at every poll, so the rule is checked
repeatedly as votes come in; that raises the chance of rolling back a canary that is not worse above
5 %, a cheap mistake (the canary can be started again), unlike serving a worse version longer."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from typing import Any

from scipy.stats import fisher_exact
from sqlmodel import Session, col

from feedback.models import Canary, Message, Staff, Thumb
from feedback.repo import (
    Conflict,
    Invalid,
    active_version,
    audit_action,
    end_canary,
    lock_versions,
    notify_serving_change,
    running_canary,
)
from feedback.versions import actor_fields, check_promotion, vote_counts

log = logging.getLogger(__name__)
ALPHA = 0.05
MIN_VOTES = 20
AUTO = "auto-rollback"


@dataclass(frozen=True)
class Verdict:
    worse: bool
    p_value: float | None  # None until both sides have MIN_VOTES votes
    canary_down: int
    canary_votes: int
    active_down: int
    active_votes: int


def judge(canary_down: int, canary_votes: int, active_down: int, active_votes: int) -> Verdict:
    """Is the canary's thumbs-down rate significantly higher than the active version's (see above)?"""
    counts = (canary_down, canary_votes, active_down, active_votes)
    if min(canary_votes, active_votes) < MIN_VOTES:
        return Verdict(False, None, *counts)
    table = [[canary_down, canary_votes - canary_down], [active_down, active_votes - active_down]]
    p_value = float(fisher_exact(table, alternative="greater").pvalue)
    return Verdict(p_value < ALPHA, round(p_value, 6), *counts)


def start(session: Session, version: str, percent: float, *, actor: str | Staff, force: bool = False) -> Canary:
    """Start a canary of `version`, or change the percentage of the running one. Refused (nothing
    changes): an unknown, active or (without `force`) gate-rejected version, or while a canary of
    another version runs."""
    lock_versions(session)
    forced = check_start(session, version, percent, force=force)
    canary = running_canary(session)
    if canary is None:
        canary = Canary(version=version, percent=percent, forced=forced, **actor_fields(actor))
    canary.percent = percent
    session.add(canary)
    notify_serving_change(session)
    _record(session, actor, "adapter.canary", version, percent=percent, forced=forced)
    return canary


def check_start(session: Session, version: str, percent: float, *, force: bool = False) -> bool:
    """Raise if a canary of `version` may not start (see `start`); whether it forces a rejected version."""
    if not 0 < percent <= 100:
        raise Invalid(f"a canary's percentage must be above 0 and at most 100, not {percent:g}")
    forced = check_promotion(session, version, force=force)
    canary = running_canary(session)
    if canary is not None and canary.version != version:
        raise Conflict(f"a canary of {canary.version} is running; stop it before starting another")
    return forced


def stop(session: Session, *, actor: str | Staff) -> Canary:
    """End the running canary (Conflict if none runs); its sessions go back to the active version."""
    lock_versions(session)
    canary = running_canary(session)
    if canary is None:
        raise Conflict("no canary is running")
    end_canary(session, canary, outcome="stopped", by=actor_fields(actor)["actor"])  # notifies the servers
    _record(session, actor, "adapter.canary_stop", canary.version)
    return canary


def _record(session: Session, actor: str | Staff, action: str, version: str, **detail: Any) -> None:
    """Commit the change, with an audit entry when a staff member made it."""
    if isinstance(actor, Staff):
        audit_action(session, actor, action, version, **detail)
    session.commit()


def evaluate(session: Session, canary: Canary) -> Verdict:
    """The rule applied to the votes on answers given since `canary` started."""
    active = active_version(session)
    votes = vote_counts(
        session,
        col(Message.created_at) >= canary.started_at,
        col(Message.adapter_version).in_([canary.version, active]),
    )

    def side(version: str) -> tuple[int, int]:
        down = votes.get((version, Thumb.down), 0)
        return down, down + votes.get((version, Thumb.up), 0)

    return judge(*side(canary.version), *side(active))


def auto_rollback(session: Session) -> Canary | None:
    """End the running canary if the rule finds it worse; the ended canary, or None."""
    canary = running_canary(session)
    if canary is None:
        return None
    verdict = evaluate(session, canary)
    if not verdict.worse:
        return None
    assert canary.id is not None  # read from the store: it has an id
    return _end_if_still_running(session, canary.id, verdict)


def _end_if_still_running(session: Session, canary_id: int, verdict: Verdict) -> Canary | None:
    session.rollback()  # the lock must come first in its transaction
    lock_versions(session)
    canary = running_canary(session)
    if canary is None or canary.id != canary_id:
        return None  # another server ended it first
    end_canary(session, canary, outcome="rolled back", by=AUTO, detail=asdict(verdict))
    session.commit()
    log.warning(
        "canary of %s rolled back automatically: thumbs-down %d/%d vs %d/%d on the active version, p = %.4f",
        canary.version,
        verdict.canary_down,
        verdict.canary_votes,
        verdict.active_down,
        verdict.active_votes,
        verdict.p_value,
    )
    return canary


def describe(canary: Canary | None) -> dict[str, Any] | None:
    if canary is None:
        return None
    return {
        "id": canary.id,
        "version": canary.version,
        "percent": canary.percent,
        "actor": canary.actor,
        "forced": canary.forced,
        "started_at": canary.started_at,
        "ended_at": canary.ended_at,
        "outcome": canary.outcome,
        "ended_by": canary.ended_by,
        "detail": json.loads(canary.detail_json),
    }
