"""The review queue for staff: answers that need a human look, most urgent first — thumbs down,
then answers whose customer asked for a human, then the most recent answers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import and_, case, exists, literal
from sqlmodel import Session, col, func, select
from sqlmodel.sql.expression import Select

from feedback.models import (
    Correction,
    CorrectionStatus,
    Feedback,
    Handoff,
    HandoffStatus,
    Message,
    Reason,
    Role,
    Thumb,
)
from feedback.repo import feedback_by_message, get_conversation, list_messages, staff_names_by_id

KINDS = ("thumbs_down", "handoff", "recent")


@dataclass
class QueueItem:
    kind: str
    message: Message
    context: list[Message]  # the conversation before the answer
    feedback: Feedback | None
    handoff: Handoff | None
    corrections: list[Correction]


@dataclass
class QueuePage:
    total: int
    items: list[QueueItem]


@dataclass
class ConversationReview:
    """A whole conversation as staff see it: every message with its vote and corrections (oldest
    first), the customer's handoff requests, and the names of the staff who appear."""

    messages: list[Message]
    feedback: dict[str, Feedback]
    corrections: dict[str, list[Correction]]
    handoffs: list[Handoff]
    names: dict[int, str]


def review_queue(
    session: Session,
    *,
    limit: int = 20,
    offset: int = 0,
    reason: Reason | None = None,
    version: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    search: str | None = None,
    include_reviewed: bool = False,
) -> QueuePage:
    """Assistant answers ordered by urgency, newest first within a kind. Answers with an approved or
    rejected correction have been dealt with and are left out unless `include_reviewed`."""
    open_handoff = exists().where(col(Handoff.message_id) == Message.id, col(Handoff.status) == HandoffStatus.open)
    priority = case((col(Feedback.thumb) == Thumb.down, literal(0)), (open_handoff, literal(1)), else_=literal(2))
    query = (
        select(Message, Feedback, priority.label("priority"))
        .outerjoin(Feedback, col(Feedback.message_id) == Message.id)
        .where(Message.role == Role.assistant)
    )
    query = _filtered(query, reason, version, (since, until), search, include_reviewed)
    total = session.exec(select(func.count()).select_from(query.subquery())).one()
    rows = session.exec(
        query.order_by(priority, col(Message.created_at).desc(), Message.id).offset(offset).limit(limit)
    ).all()
    return QueuePage(total, _items(session, rows))


def _filtered(
    query: Select[Message, Feedback, Any],
    reason: Reason | None,
    version: str | None,
    period: tuple[datetime | None, datetime | None],
    search: str | None,
    include_reviewed: bool,
) -> Select[Message, Feedback, Any]:
    since, until = period
    if reason is not None:
        query = query.where(Feedback.reason == reason)
    if version is not None:
        query = query.where(Message.adapter_version == version)
    if since is not None:
        query = query.where(Message.created_at >= since)
    if until is not None:
        query = query.where(Message.created_at < until)
    if search:
        escaped = search.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        pattern = f"%{escaped}%"
        query = query.where(func.lower(Message.text).like(pattern, escape="\\"))
    if not include_reviewed:
        reviewed = exists().where(
            and_(
                col(Correction.message_id) == Message.id,
                col(Correction.status).in_([CorrectionStatus.approved, CorrectionStatus.rejected]),
            )
        )
        query = query.where(~reviewed)
    return query


def _items(session: Session, rows: Sequence[tuple[Message, Feedback | None, int]]) -> list[QueueItem]:
    """The page's items with their context, handoffs and corrections, in three queries for the page."""
    answers = [message for message, _, _ in rows]
    conversations = {m.conversation_id for m in answers}
    earlier: dict[str, list[Message]] = {}
    for m in session.exec(
        select(Message).where(col(Message.conversation_id).in_(conversations)).order_by(col(Message.seq))
    ):
        earlier.setdefault(m.conversation_id, []).append(m)
    ids = [m.id for m in answers]
    handoffs = {
        h.message_id: h
        for h in session.exec(select(Handoff).where(col(Handoff.message_id).in_(ids)).order_by(col(Handoff.created_at)))
    }  # the newest wins
    corrections = _corrections_of(session, ids)
    return [
        QueueItem(
            KINDS[priority],
            message,
            [m for m in earlier[message.conversation_id] if m.seq < message.seq],
            feedback,
            handoffs.get(message.id),
            corrections.get(message.id, []),
        )
        for message, feedback, priority in rows
    ]


def _corrections_of(session: Session, message_ids: list[str]) -> dict[str, list[Correction]]:
    """The corrections of each of these answers, oldest first."""
    found: dict[str, list[Correction]] = {}
    for correction in session.exec(
        select(Correction).where(col(Correction.message_id).in_(message_ids)).order_by(col(Correction.id))
    ):
        found.setdefault(correction.message_id, []).append(correction)
    return found


def answer_versions(session: Session) -> list[str]:
    """The adapter versions that have answered, for the queue's version filter."""
    query = (
        select(Message.adapter_version)
        .where(Message.role == Role.assistant, col(Message.adapter_version).is_not(None))
        .distinct()
    )
    return sorted(cast("Sequence[str]", session.exec(query).all()))  # no NULLs: filtered out above


def conversation_review(session: Session, *, conversation_id: str) -> ConversationReview:
    get_conversation(session, conversation_id=conversation_id)
    messages = list_messages(session, conversation_id=conversation_id)
    ids = [m.id for m in messages]
    corrections = _corrections_of(session, ids)
    handoffs = list(
        session.exec(
            select(Handoff).where(Handoff.conversation_id == conversation_id).order_by(col(Handoff.created_at))
        )
    )
    flat = [c for cs in corrections.values() for c in cs]
    return ConversationReview(
        messages,
        feedback_by_message(session, conversation_id=conversation_id),
        corrections,
        handoffs,
        staff_names(session, flat, handoffs, [m.staff_id for m in messages if m.staff_id]),
    )


def staff_names(
    session: Session, corrections: list[Correction], handoffs: Sequence[Handoff] = (), authors: Sequence[int] = ()
) -> dict[int, str]:
    """Names of the staff who wrote or reviewed `corrections`, closed `handoffs`, or are `authors` (of
    agent messages)."""
    ids = (
        {i for c in corrections for i in (c.staff_id, c.reviewed_by) if i}
        | {h.closed_by for h in handoffs if h.closed_by}
        | set(authors)
    )
    return staff_names_by_id(session, ids=list(ids))
