"""The review queue for staff: answers that need a human look, most urgent first — thumbs down,
then answers whose customer asked for a human, then the most recent answers."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, case, exists, literal
from sqlmodel import Session, func, select

from feedback.models import (
    Correction, CorrectionStatus, Feedback, Handoff, HandoffStatus, Message, Reason, Role, Thumb,
)
from feedback.repo import list_messages

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


def review_queue(session: Session, *, limit: int = 20, offset: int = 0, reason: Reason | None = None,
                 version: str | None = None, since: datetime | None = None, search: str | None = None,
                 include_reviewed: bool = False) -> QueuePage:
    """Assistant answers ordered by urgency, newest first within a kind. Answers with an approved or
    rejected correction have been dealt with and are left out unless `include_reviewed`."""
    open_handoff = exists().where(Handoff.message_id == Message.id, Handoff.status == HandoffStatus.open)
    priority = case((Feedback.thumb == Thumb.down, literal(0)), (open_handoff, literal(1)), else_=literal(2))
    query = (select(Message, Feedback, priority.label("priority"))
             .outerjoin(Feedback, Feedback.message_id == Message.id)
             .where(Message.role == Role.assistant))
    query = _filtered(query, reason, version, since, search, include_reviewed)
    total = session.exec(select(func.count()).select_from(query.subquery())).one()
    rows = session.exec(query.order_by(priority, Message.created_at.desc(), Message.id).offset(offset).limit(limit))
    return QueuePage(total, [_item(session, *row) for row in rows])


def _filtered(query, reason, version, since, search, include_reviewed):
    if reason is not None:
        query = query.where(Feedback.reason == reason)
    if version is not None:
        query = query.where(Message.adapter_version == version)
    if since is not None:
        query = query.where(Message.created_at >= since)
    if search:
        escaped = search.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        pattern = f"%{escaped}%"
        query = query.where(func.lower(Message.text).like(pattern, escape="\\"))
    if not include_reviewed:
        reviewed = exists().where(and_(Correction.message_id == Message.id,
                                       Correction.status.in_([CorrectionStatus.approved, CorrectionStatus.rejected])))
        query = query.where(~reviewed)
    return query


def _item(session: Session, message: Message, feedback: Feedback | None, priority: int) -> QueueItem:
    earlier = [m for m in list_messages(session, conversation_id=message.conversation_id) if m.seq < message.seq]
    handoff = session.exec(select(Handoff).where(Handoff.message_id == message.id)
                           .order_by(Handoff.created_at.desc())).first()
    corrections = list(session.exec(select(Correction).where(Correction.message_id == message.id)
                                    .order_by(Correction.id)))
    return QueueItem(KINDS[priority], message, earlier, feedback, handoff, corrections)
