"""Handoff requests and live takeover: a customer asks for a human (open, waiting), an agent takes the
conversation (taken: one owner, the bot does not answer it), chats with the customer (messages of role
`agent`), and hands it back to the bot or closes it. An agent's replies to a conversation whose bot turn
the customer rejected become a *draft* correction of that turn (origin `handoff`), never approved here.
Keyword-only functions over a `Session`; each commits what it writes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import cast

from sqlalchemy import update
from sqlmodel import Session, col, func, select

from feedback.models import (
    Correction,
    CorrectionStatus,
    Feedback,
    Handoff,
    HandoffOutcome,
    HandoffStatus,
    Message,
    Role,
    Staff,
    StaffRole,
    Thumb,
    utcnow,
)
from feedback.repo import Conflict, NotFound, add_message, audit_action, get_conversation

LIVE = (HandoffStatus.open, HandoffStatus.taken)
HANDOFF_ORIGIN = "handoff"


@dataclass(frozen=True)
class LiveState:
    """Where a conversation's handoff stands, as the customer's widget shows it."""

    handoff_id: int
    status: HandoffStatus
    agent: str | None  # the owner's name once taken
    position: int | None  # 1 = next to be taken, while waiting


def request_handoff(session: Session, *, conversation_id: str, note: str | None = None) -> Handoff:
    """The customer wants a human. Linked to the latest answer of the session (the turn they rejected);
    asking again while one is waiting or taken returns that one (with the newer note, if any)."""
    get_conversation(session, conversation_id=conversation_id)
    handoff = live_handoff(session, conversation_id=conversation_id)
    if handoff is None:
        last = session.exec(
            select(Message.id)
            .where(Message.conversation_id == conversation_id, Message.role == Role.assistant)
            .order_by(col(Message.seq).desc())
        ).first()
        handoff = Handoff(conversation_id=conversation_id, message_id=last)
    handoff.note = note if note is not None else handoff.note
    session.add(handoff)
    session.commit()
    return handoff


def leave_contact(session: Session, *, conversation_id: str, email: str) -> Handoff:
    """Nobody was available: the customer leaves an email for staff to write back (on the session's
    waiting request, asked for now if there is none)."""
    handoff = live_handoff(session, conversation_id=conversation_id) or request_handoff(
        session, conversation_id=conversation_id
    )
    handoff.contact_email = email
    session.add(handoff)
    session.commit()
    return handoff


def live_handoff(session: Session, *, conversation_id: str) -> Handoff | None:
    """The conversation's waiting or taken handoff, if any."""
    query = select(Handoff).where(Handoff.conversation_id == conversation_id, col(Handoff.status).in_(LIVE))
    return session.exec(query.order_by(col(Handoff.id).desc())).first()


def list_handoffs(session: Session, *, statuses: tuple[HandoffStatus, ...] | None = LIVE) -> list[Handoff]:
    """The inbox: oldest first (the customer who has waited longest on top)."""
    query = select(Handoff).order_by(col(Handoff.created_at), col(Handoff.id))
    return list(session.exec(query if statuses is None else query.where(col(Handoff.status).in_(statuses))))


def get_handoff(session: Session, *, handoff_id: int) -> Handoff:
    handoff = session.get(Handoff, handoff_id)
    if handoff is None:
        raise NotFound(f"no handoff request {handoff_id}")
    return handoff


def position(session: Session, handoff: Handoff) -> int | None:
    """1-based place of a waiting request among the waiting ones (None once taken or closed)."""
    if handoff.status != HandoffStatus.open:
        return None
    earlier = select(func.count()).select_from(Handoff).where(Handoff.status == HandoffStatus.open)
    return int(session.exec(earlier.where(col(Handoff.id) < handoff.id)).one()) + 1


def live_state(session: Session, *, conversation_id: str) -> LiveState | None:
    handoff = live_handoff(session, conversation_id=conversation_id)
    if handoff is None:
        return None
    owner = session.get(Staff, handoff.assigned_to) if handoff.assigned_to else None
    return LiveState(cast(int, handoff.id), handoff.status, owner.name if owner else None, position(session, handoff))


def _locked(session: Session, handoff_id: int) -> Handoff:
    """The handoff, its row locked until commit (PostgreSQL: a row lock; SQLite: the write lock), so that
    two agents taking it at once are served one after the other."""
    session.execute(update(Handoff).where(col(Handoff.id) == handoff_id).values(status=Handoff.status))
    handoff = get_handoff(session, handoff_id=handoff_id)
    session.refresh(handoff)
    return handoff


def _owner_name(session: Session, handoff: Handoff) -> str:
    owner = session.get(Staff, handoff.assigned_to) if handoff.assigned_to else None
    return owner.name if owner else "another agent"


def take(session: Session, *, handoff_id: int, actor: Staff, reassign: bool = False) -> Handoff:
    """`actor` takes the conversation over. Taken by someone else → Conflict naming them, unless an admin
    asks to `reassign` it to themselves. Closed → Conflict."""
    handoff = _locked(session, handoff_id)
    if handoff.status == HandoffStatus.closed:
        raise Conflict(f"handoff request {handoff_id} is closed")
    others = handoff.status == HandoffStatus.taken and handoff.assigned_to != actor.id
    if others and not (reassign and actor.role == StaffRole.admin):
        raise Conflict(f"handoff request {handoff_id} is taken by {_owner_name(session, handoff)}")
    previous = handoff.assigned_to
    handoff.status, handoff.assigned_to, handoff.assigned_at = HandoffStatus.taken, actor.id, utcnow()
    session.add(handoff)
    audit_action(session, actor, "handoff.take", str(handoff_id), previous_owner=previous)
    session.commit()
    return handoff


def _check_owner(session: Session, handoff: Handoff, actor: Staff, what: str) -> None:
    if handoff.status != HandoffStatus.taken:
        raise Conflict(f"handoff request {handoff.id} is {handoff.status.value}: take it over before you {what}")
    if handoff.assigned_to != actor.id and actor.role != StaffRole.admin:
        raise Conflict(f"handoff request {handoff.id} is taken by {_owner_name(session, handoff)}")


def end(session: Session, *, handoff_id: int, actor: Staff, outcome: HandoffOutcome) -> Handoff:
    """Hand the conversation back to the bot (the owner or an admin), or close it (any staff member; a
    waiting request can be closed without being taken)."""
    handoff = _locked(session, handoff_id)
    if handoff.status == HandoffStatus.closed:
        raise Conflict(f"handoff request {handoff_id} is already closed")
    if outcome == HandoffOutcome.handed_back or handoff.status == HandoffStatus.taken:
        _check_owner(session, handoff, actor, "hand it back")
    handoff.status, handoff.outcome = HandoffStatus.closed, outcome
    handoff.closed_by, handoff.closed_at = actor.id, utcnow()
    session.add(handoff)
    audit_action(session, actor, f"handoff.{'hand_back' if outcome == HandoffOutcome.handed_back else 'close'}",
                 str(handoff_id))  # fmt: skip
    session.commit()
    return handoff


def agent_reply(session: Session, *, handoff_id: int, actor: Staff, text: str) -> tuple[Message, Correction | None]:
    """An agent's message to the customer (the owner, or an admin), and the draft correction it feeds
    when the conversation's bot turn was rejected."""
    handoff = get_handoff(session, handoff_id=handoff_id)
    _check_owner(session, handoff, actor, "reply")
    message = add_message(session, conversation_id=handoff.conversation_id, role=Role.agent, text=text,
                          staff_id=actor.id, commit=False)  # fmt: skip
    draft = _draft_from_replies(session, handoff, actor)
    session.commit()
    return message, draft


def rejected_turn(session: Session, handoff: Handoff) -> str | None:
    """The bot turn the customer rejected: the answer the handoff was asked after, else the conversation's
    latest thumbed-down answer."""
    if handoff.message_id is not None:
        return handoff.message_id
    query = (
        select(Message.id)
        .join(Feedback, col(Feedback.message_id) == Message.id)
        .where(Message.conversation_id == handoff.conversation_id, Feedback.thumb == Thumb.down)
    )
    return session.exec(query.order_by(col(Message.seq).desc())).first()


def _draft_from_replies(session: Session, handoff: Handoff, actor: Staff) -> Correction | None:
    """The draft correction of the rejected turn: the agent's replies in this handoff so far, one per
    paragraph, kept up to date until staff edit or review it."""
    target = rejected_turn(session, handoff)
    if target is None:
        return None
    replies = _replies_since(session, handoff.conversation_id, handoff.created_at)
    draft = session.exec(
        select(Correction).where(Correction.message_id == target, Correction.origin == HANDOFF_ORIGIN)
    ).first()
    if draft is None:
        draft = Correction(message_id=target, text="", staff_id=cast(int, actor.id), origin=HANDOFF_ORIGIN)
    elif draft.status != CorrectionStatus.draft or draft.revision > 1:
        return None  # staff have taken it from here
    draft.text, draft.updated_at = "\n\n".join(replies), utcnow()
    session.add(draft)
    return draft


def _replies_since(session: Session, conversation_id: str, since: datetime) -> list[str]:
    query = select(Message.text).where(
        Message.conversation_id == conversation_id, Message.role == Role.agent, col(Message.created_at) >= since
    )
    return list(session.exec(query.order_by(col(Message.seq))))
