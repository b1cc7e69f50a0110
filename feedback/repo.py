"""Keyword-only repository functions over a `Session`. Each commits what it writes."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from sqlalchemy import CursorResult, Insert, text, update
from sqlmodel import Session, col, func, select

from feedback.models import (
    Adapter,
    AdapterActivation,
    AdapterStatus,
    Canary,
    Conversation,
    Correction,
    CorrectionStatus,
    Feedback,
    GroundingSource,
    Message,
    Reason,
    Role,
    Staff,
    StaffAction,
    StaffRole,
    Thumb,
    utcnow,
)
from feedback.registry import BASE_VERSION
from feedback.tokens import hash_token, new_session_token, new_token, token_matches

ADAPTER_CHANNEL = "supportloop_adapters"  # PostgreSQL NOTIFY channel: what servers serve changed


class NotFound(LookupError):
    """A row the caller named does not exist."""


class Invalid(ValueError):
    """The request names real rows but asks for something the rules forbid."""


class Conflict(RuntimeError):
    """The row changed since the caller read it (someone else acted first)."""


def new_id() -> str:
    return uuid.uuid4().hex


# conversations and messages -------------------------------------------------------------------


def new_conversation(session: Session, *, system_prompt: str) -> tuple[Conversation, str]:
    """A new conversation and its customer's secret (returned this once; the store keeps its digest)."""
    token = new_session_token()
    conversation = Conversation(id=new_id(), system_prompt=system_prompt, token_hash=hash_token(token))
    session.add(conversation)
    session.commit()
    return conversation, token


def customer_conversation(session: Session, *, conversation_id: str, token: str | None) -> Conversation:
    """The conversation `conversation_id` if `token` is its secret; NotFound otherwise (an unknown id and
    a wrong secret look the same, so that a guess tells nothing)."""
    found = session.get(Conversation, conversation_id)
    if found is None or not token_matches(token, found.token_hash):
        raise NotFound(f"no session with id {conversation_id!r} and this session token")
    return found


def open_conversation(
    session: Session, *, conversation_id: str | None, token: str | None, system_prompt: str
) -> tuple[Conversation, str | None]:
    """The customer's conversation to resume (and None), or a new one with its secret when the id is
    absent, unknown or the secret is not its own (ids are made by the server, never adopted)."""
    if conversation_id:
        with contextlib.suppress(NotFound):
            return customer_conversation(session, conversation_id=conversation_id, token=token), None
    return new_conversation(session, system_prompt=system_prompt)


def get_or_create_conversation(session: Session, *, conversation_id: str | None, system_prompt: str) -> Conversation:
    """The conversation `conversation_id`, or a new one (also when that id is unknown) that no customer can
    reach (no secret: for tools and imports; customers' sessions come from `open_conversation`)."""
    if conversation_id:
        found = session.get(Conversation, conversation_id)
        if found is not None:
            return found
    conversation = Conversation(id=new_id(), system_prompt=system_prompt)
    session.add(conversation)
    session.commit()
    return conversation


def list_messages(session: Session, *, conversation_id: str) -> list[Message]:
    query = select(Message).where(Message.conversation_id == conversation_id).order_by(col(Message.seq))
    return list(session.exec(query))


def add_message(
    session: Session,
    *,
    conversation_id: str,
    role: Role,
    text: str,
    adapter_version: str | None = None,
    prompt_tokens: int | None = None,
    completion_tokens: int | None = None,
    latency_ms: float | None = None,
    grounding: str | None = None,
    sources: Sequence[GroundingSource] = (),
    staff_id: int | None = None,
    commit: bool = True,
) -> Message:
    seq = session.exec(
        select(func.count()).select_from(Message).where(Message.conversation_id == conversation_id)
    ).one()
    message = Message(
        id=new_id(),
        conversation_id=conversation_id,
        seq=seq,
        role=role,
        text=text,
        adapter_version=adapter_version,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        latency_ms=latency_ms,
        grounding=grounding,
        staff_id=staff_id,
    )
    session.add(message)
    session.flush()  # the message's row first: its sources refer to it
    for rank, source in enumerate(sources):
        source.message_id, source.rank = message.id, rank
        session.add(source)
    if commit:
        session.commit()
    return message


def sources_of(session: Session, *, message_ids: Sequence[str]) -> dict[str, list[GroundingSource]]:
    """The passages that grounded each of these answers, in rank order."""
    found: dict[str, list[GroundingSource]] = {}
    if message_ids:
        query = (
            select(GroundingSource)
            .where(col(GroundingSource.message_id).in_(list(message_ids)))
            .order_by(col(GroundingSource.message_id), col(GroundingSource.rank))
        )
        for source in session.exec(query):
            found.setdefault(source.message_id, []).append(source)
    return found


def get_conversation(session: Session, *, conversation_id: str) -> Conversation:
    conversation = session.get(Conversation, conversation_id)
    if conversation is None:
        raise NotFound(f"no session with id {conversation_id!r}")
    return conversation


def feedback_by_message(session: Session, *, conversation_id: str) -> dict[str, Feedback]:
    query = (
        select(Feedback)
        .join(Message, col(Message.id) == Feedback.message_id)
        .where(Message.conversation_id == conversation_id)
    )
    return {vote.message_id: vote for vote in session.exec(query)}


def delete_message(session: Session, *, message_id: str) -> None:
    """Remove a message that was never answered (its request was refused before generation)."""
    message = session.get(Message, message_id)
    if message is not None:
        session.delete(message)
        session.commit()


def get_message(session: Session, *, message_id: str) -> Message:
    message = session.get(Message, message_id)
    if message is None:
        raise NotFound(f"no message with id {message_id!r}")
    return message


# feedback and handoffs (customers) -------------------------------------------------------------


@dataclass(frozen=True)
class Vote:
    message_id: str
    thumb: Thumb
    reason: Reason | None = None
    comment: str | None = None
    session_token: str | None = field(default=None, repr=False)  # a customer's vote: their session's secret


def set_feedback(
    session: Session, *, message_id: str, thumb: Thumb, reason: Reason | None = None, comment: str | None = None
) -> Feedback:
    """Record the customer's vote on an answer: one per message, a later vote replaces the earlier
    one. Reasons go with thumbs down only."""
    outcome = record_votes(session, [Vote(message_id, thumb, reason, comment)])[0]
    if isinstance(outcome, Exception):
        raise outcome
    return session.exec(select(Feedback).where(Feedback.message_id == message_id)).one()


def record_votes(session: Session, votes: list[Vote]) -> list[Vote | Exception]:
    """Store many votes in one transaction (an upsert per message, so concurrent writers on any
    number of connections or replicas never duplicate a vote); commits. Returns, per vote, the vote
    as stored or the exception that refused it (NotFound, Invalid); refused votes do not stop the others."""
    found = session.exec(
        select(Message.id, col(Message.role), col(Message.adapter_version), col(Conversation.token_hash))
        .join(Conversation, col(Conversation.id) == Message.conversation_id)
        .where(col(Message.id).in_({v.message_id for v in votes}))
    ).all()
    answers = {message_id: (role, version, digest) for message_id, role, version, digest in found}
    outcomes = [_vote_problem(vote, *answers.get(vote.message_id, (None, None, None))) or vote for vote in votes]
    now = utcnow()
    rows = {
        v.message_id: {
            "message_id": v.message_id,
            "thumb": v.thumb,
            "reason": v.reason,
            "comment": v.comment,
            "created_at": now,
            "updated_at": now,
        }
        for v in outcomes
        if isinstance(v, Vote)
    }  # two votes on one answer in a batch: the later counts
    if rows:
        session.execute(_upsert_vote(session.get_bind().dialect.name), list(rows.values()))
    session.commit()
    return outcomes


def _vote_problem(vote: Vote, role: Role | None, version: str | None, digest: str | None) -> Exception | None:
    """Votes go on answers the model wrote (they stamp a version), never on text a client wrote: a
    conversation sent to the OpenAI API may carry `assistant` turns of the client's own, and a thumbs-up
    on one would put that text into the SFT data. A customer votes only in their own session (its secret):
    another session's answer looks like no answer at all."""
    if role is None or (vote.session_token is not None and not token_matches(vote.session_token, digest)):
        return NotFound(f"no message with id {vote.message_id!r} in this session")
    if role != Role.assistant:
        return Invalid("votes go on the bot's answers, not on customer or staff messages")
    if version is None:
        return Invalid("votes go on the bot's own answers; this turn was written by the client, not by the model")
    if vote.reason is not None and vote.thumb != Thumb.down:
        return Invalid("a reason can only be given with a thumbs down")
    return None


def _upsert_vote(dialect: str) -> Insert:
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert  # type: ignore[assignment]  # same API as PostgreSQL's
    else:
        raise NotImplementedError(f"votes need an upsert; {dialect} is not supported (use SQLite or PostgreSQL)")
    statement = insert(Feedback.__table__)  # type: ignore[attr-defined]  # SQLModel does not declare __table__
    return statement.on_conflict_do_update(
        index_elements=["message_id"],
        set_={name: statement.excluded[name] for name in ("thumb", "reason", "comment", "updated_at")},
    )


# corrections (staff) ----------------------------------------------------------------------------


def add_correction(
    session: Session,
    *,
    message_id: str,
    actor: Staff,
    text: str,
    approve: bool,
    reject: bool = False,
    based_on: int | None = None,
) -> Correction:
    """A new correction of an answer: a draft, approved, or (`reject`) rejected, which takes the answer
    off the review queue without training on it. `based_on`: the newest correction of the answer the
    editor saw (0: none); if another has been added since, nothing is written (Conflict)."""
    if approve and reject:
        raise Invalid("a correction cannot be both approved and rejected")
    if based_on is not None:
        _lock_message(session, message_id)
    message = get_message(session, message_id=message_id)
    if message.role != Role.assistant:
        raise Invalid("only assistant answers (the bot's) can be corrected")
    if based_on is not None:
        _check_newest(session, message_id, based_on)
    status = CorrectionStatus.approved if approve else CorrectionStatus.rejected if reject else None
    correction = Correction(
        message_id=message_id,
        staff_id=cast(int, actor.id),
        text=text,  # a draft unless reviewed at once
        **(_review_columns(actor, status) if status else {}),
    )
    session.add(correction)
    session.flush()
    action = "correction.approve" if approve else "correction.reject" if reject else "correction.create"
    audit_action(session, actor, action, str(correction.id), message_id=message_id)
    session.commit()
    return correction


def _lock_message(session: Session, message_id: str) -> None:
    """Serialize corrections of one answer until the transaction ends (PostgreSQL: its row lock; SQLite:
    the write lock, taken before anything is read)."""
    session.execute(
        update(Message)
        .where(col(Message.id) == message_id)
        .values(seq=Message.seq)
        .execution_options(synchronize_session=False)
    )


def _check_newest(session: Session, message_id: str, based_on: int) -> None:
    newest = session.exec(
        select(Correction).where(Correction.message_id == message_id).order_by(col(Correction.id).desc())
    ).first()
    if (newest.id if newest else 0) != based_on:
        session.rollback()
        if newest is None:
            raise Conflict(f"this answer has no correction {based_on}; nothing was saved — reload it")
        who = session.get(Staff, newest.reviewed_by or newest.staff_id)
        raise Conflict(
            f"{who.name if who else 'someone'} {_did(newest.status)} this answer after you opened it; "
            "nothing was saved — reload it to see their correction"
        )


def _did(status: CorrectionStatus) -> str:
    return {
        CorrectionStatus.draft: "drafted a correction of",
        CorrectionStatus.approved: "approved a correction of",
        CorrectionStatus.rejected: "rejected",
    }[status]


def get_correction(session: Session, *, correction_id: int) -> Correction:
    correction = session.get(Correction, correction_id)
    if correction is None:
        raise NotFound(f"no correction {correction_id}")
    return correction


def list_corrections(
    session: Session, *, status: CorrectionStatus | None = None, message_id: str | None = None
) -> list[Correction]:
    query = select(Correction).order_by(col(Correction.updated_at).desc(), col(Correction.id).desc())
    if status is not None:
        query = query.where(Correction.status == status)
    if message_id is not None:
        query = query.where(Correction.message_id == message_id)
    return list(session.exec(query))


def edit_correction(
    session: Session, *, correction_id: int, actor: Staff, text: str, revision: int, approve: bool = False
) -> Correction:
    """Change a draft's text (and with `approve`, approve it in the same write). `revision` is the one
    the editor started from: if someone changed the correction since, nothing is overwritten (Conflict)."""
    _check_draft(session, correction_id, revision)
    audit_action(session, actor, "correction.edit", str(correction_id))
    review = _review_columns(actor, CorrectionStatus.approved) if approve else {}
    if approve:
        audit_action(session, actor, "correction.approve", str(correction_id))
    return _guarded_update(session, correction_id, revision, text=text, **review)


def review_correction(
    session: Session, *, correction_id: int, actor: Staff, approve: bool, revision: int | None = None
) -> Correction:
    """Approve or reject a draft (if `revision` is given, only while it is still at that revision)."""
    correction = _check_draft(session, correction_id, revision)
    status = CorrectionStatus.approved if approve else CorrectionStatus.rejected
    audit_action(session, actor, "correction.approve" if approve else "correction.reject", str(correction_id))
    return _guarded_update(session, correction_id, correction.revision, **_review_columns(actor, status))


def _check_draft(session: Session, correction_id: int, revision: int | None) -> Correction:
    """The correction, if it is still an editable draft at `revision`; else a Conflict that says why."""
    correction = get_correction(session, correction_id=correction_id)
    if correction.status != CorrectionStatus.draft:
        who = session.get(Staff, correction.reviewed_by) if correction.reviewed_by else None
        raise Conflict(
            f"correction {correction_id} was already {correction.status.value}"
            + (f" by {who.name}" if who else "")
            + "; nothing was changed"
        )
    if revision is not None and revision != correction.revision:
        raise Conflict(
            f"correction {correction_id} was edited by someone else (it is at revision "
            f"{correction.revision}, your edit started from {revision}); nothing was changed"
        )
    return correction


def _guarded_update(session: Session, correction_id: int, revision: int, **values: Any) -> Correction:
    """Write `values` only if the row is still a draft at `revision` (compare-and-set in one UPDATE,
    so two reviewers on different connections or replicas cannot both win)."""
    claimed = cast(
        CursorResult[Any],
        session.execute(
            update(Correction)
            .where(
                col(Correction.id) == correction_id,
                col(Correction.revision) == revision,
                col(Correction.status) == CorrectionStatus.draft,
            )
            .values(revision=revision + 1, updated_at=utcnow(), **values)
            .execution_options(synchronize_session=False)
        ),
    )
    if claimed.rowcount != 1:
        session.rollback()
        raise Conflict(f"correction {correction_id} was changed by someone else meanwhile; nothing was changed")
    session.commit()
    correction = session.get(Correction, correction_id)
    session.refresh(correction)
    assert correction is not None  # refresh() raised otherwise
    return correction


def _review_columns(actor: Staff, status: CorrectionStatus) -> dict[str, Any]:
    """A correction's columns once `actor` has reviewed it now."""
    return {"status": status, "reviewed_by": actor.id, "reviewed_at": utcnow()}


# staff accounts and the audit trail -------------------------------------------------------------


def create_staff(
    session: Session, *, name: str, role: StaffRole = StaffRole.agent, actor: Staff | None = None
) -> tuple[Staff, str]:
    """A new staff account and its bearer token; only the token's hash is stored. `actor` is the
    admin who made it (None from the command line)."""
    if session.exec(select(Staff).where(Staff.name == name)).first() is not None:
        raise Conflict(f"a staff member named {name!r} already exists")
    token = new_token()
    staff = Staff(name=name, role=role, token_hash=hash_token(token))
    session.add(staff)
    session.flush()
    if actor is not None:
        audit_action(session, actor, "staff.create", str(staff.id), name=name, role=role.value)
    session.commit()
    return staff, token


def staff_by_token(session: Session, *, token: str) -> Staff | None:
    """The account a token belongs to (disabled ones included: callers tell them apart)."""
    return session.exec(select(Staff).where(Staff.token_hash == hash_token(token))).first()


def staff_names_by_id(session: Session, *, ids: Sequence[int]) -> dict[int, str]:
    if not ids:
        return {}
    rows = session.exec(select(Staff.id, Staff.name).where(col(Staff.id).in_(set(ids)))).all()
    return {cast(int, staff_id): name for staff_id, name in rows}


def list_staff(session: Session) -> list[Staff]:
    return list(session.exec(select(Staff).order_by(col(Staff.id))))


def update_staff(
    session: Session, *, staff_id: int, actor: Staff, role: StaffRole | None = None, disabled: bool | None = None
) -> Staff:
    staff = session.get(Staff, staff_id)
    if staff is None:
        raise NotFound(f"no staff member {staff_id}")
    changes = {k: v for k, v in (("role", role), ("disabled", disabled)) if v is not None}
    for key, value in changes.items():
        setattr(staff, key, value)
    if staff.role != StaffRole.admin or staff.disabled:
        others = (
            select(func.count())
            .select_from(Staff)
            .where(Staff.role == StaffRole.admin, Staff.id != staff.id, Staff.disabled == False)  # noqa: E712
        )
        if session.exec(others).one() == 0:
            session.rollback()
            raise Invalid("this would leave no active admin")
    session.add(staff)
    audit_action(
        session, actor, "staff.update", str(staff_id), **{k: getattr(v, "value", v) for k, v in changes.items()}
    )
    session.commit()
    return staff


def audit_action(session: Session, actor: Staff, action: str, target: str, **detail: Any) -> None:
    session.add(StaffAction(staff_id=cast(int, actor.id), action=action, target=target, detail_json=json.dumps(detail)))


def list_actions(session: Session, *, limit: int = 100, offset: int = 0) -> list[StaffAction]:
    query = select(StaffAction).order_by(col(StaffAction.created_at).desc(), col(StaffAction.id).desc())
    return list(session.exec(query.offset(offset).limit(limit)))


# adapters and training runs -------------------------------------------------------------------


def active_adapter(session: Session) -> Adapter | None:
    return session.exec(select(Adapter).where(Adapter.status == AdapterStatus.active)).first()


def adapter_versions(session: Session) -> set[str]:
    return set(session.exec(select(Adapter.version)))


def register_adapter(
    session: Session,
    *,
    version: str,
    path: str,
    base_model: str,
    parent: str | None,
    dataset_hash: str | None,
    metrics: dict[str, Any],
    activate: bool,
    datasets: dict[str, Any] | None = None,
    rejected: bool = False,
) -> Adapter:
    """Insert an adapter row; with `activate`, it becomes the one active version in one commit. A
    `rejected` one (the gate refused it) is kept for inspection and never activated."""
    if activate:
        lock_versions(session)
    adapter = Adapter(
        version=version,
        path=path,
        parent=parent,
        base_model=base_model,
        dataset_hash=dataset_hash,
        metrics_json=json.dumps(metrics),
        datasets_json=json.dumps(datasets or {}),
    )
    if rejected:
        adapter.status = AdapterStatus.rejected
    session.add(adapter)
    if activate and not rejected:
        session.flush()
        set_active(session, version, action="publish", actor="training round")
    else:
        notify_serving_change(session)  # servers preload new candidates so a promotion is a flip
    session.commit()
    return adapter


def active_version(session: Session) -> str:
    row = active_adapter(session)
    return row.version if row else BASE_VERSION


def set_active(
    session: Session, version: str, *, action: str, actor: str, staff_id: int | None = None, forced: bool = False
) -> AdapterActivation:
    """Make `version` the one active version and record it (no commit: the caller's transaction)."""
    actives = list(session.exec(select(Adapter).where(Adapter.status == AdapterStatus.active)))
    previous = actives[0].version if actives else BASE_VERSION
    for old in actives:
        old.status = AdapterStatus.retired
        session.add(old)
    if version != BASE_VERSION:
        adapter = session.exec(select(Adapter).where(Adapter.version == version)).one()
        adapter.status, adapter.activated_at = AdapterStatus.active, utcnow()
        session.add(adapter)
    activation = AdapterActivation(
        version=version, previous=previous, action=action, actor=actor, staff_id=staff_id, forced=forced
    )
    session.add(activation)
    notify_serving_change(session)
    return activation


def lock_versions(session: Session) -> None:
    """Serialize changes of what is served (promotions, rollbacks, canaries) across processes until
    the transaction ends. Must be the transaction's first statement: on SQLite it takes the write lock
    (waiting up to the busy timeout) before anything is read, so no change is decided on a stale read."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(hashtext(:name))"), {"name": ADAPTER_CHANNEL})
    else:
        session.execute(text("UPDATE adapteractivation SET id = id WHERE 1 = 0"))


def notify_serving_change(session: Session) -> None:
    """On PostgreSQL, tell every listening server at commit that the active version or canary changed."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text(f"NOTIFY {ADAPTER_CHANNEL}"))


def running_canary(session: Session) -> Canary | None:
    return session.exec(select(Canary).where(col(Canary.ended_at).is_(None)).order_by(col(Canary.id).desc())).first()


def end_canary(
    session: Session, canary: Canary, *, outcome: str, by: str, detail: dict[str, Any] | None = None
) -> Canary:
    """Mark `canary` ended (no commit: the caller's transaction)."""
    canary.ended_at, canary.outcome, canary.ended_by = utcnow(), outcome, by
    canary.detail_json = json.dumps(detail or {})
    session.add(canary)
    notify_serving_change(session)
    return canary
