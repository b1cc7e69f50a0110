"""The staff API (bearer token): corrections and the review queue for agents; staff accounts and the
audit trail for admins. Every state change is recorded with who and when (`feedback.repo`)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from bot.server.deps import MAX_ROW_ID, AdminDep, RowId, SessionDep, StaffDep, StoredInt
from bot.server.protocol import FeedbackState, HandoffResponse, Source
from feedback import repo
from feedback.models import CorrectionStatus, Reason, Role, StaffRole
from feedback.queue import (
    ConversationReview,
    QueueItem,
    answer_versions,
    conversation_review,
    review_queue,
    staff_names,
)

router = APIRouter(prefix="/api")
Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=8000)]
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=128)]


class CorrectionRequest(BaseModel):
    text: Text
    approve: bool = False
    reject: bool = Field(False, description="rejected: the answer leaves the review queue and is not trained on")
    based_on: int | None = Field(
        None,
        ge=0,
        le=MAX_ROW_ID,
        description="the newest correction of this answer the editor saw (0: "
        "none); if another was added since, nothing is saved (409)",
    )


class CorrectionEdit(BaseModel):
    text: Text
    revision: StoredInt  # the revision the edit started from (stale edits are refused with 409)
    approve: bool = False  # approve the edited text in the same write


class ReviewRequest(BaseModel):
    revision: StoredInt | None = None


class CorrectionOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    message_id: str
    text: str
    status: CorrectionStatus
    revision: int
    staff_id: int
    reviewed_by: int | None
    origin: str = Field("staff", description="staff (written in review) or handoff (an agent's live replies)")
    created_at: datetime
    updated_at: datetime
    reviewed_at: datetime | None


class QueueMessage(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    role: Role
    text: str
    adapter_version: str | None
    created_at: datetime
    sources: list[Source] = Field([], description="what grounded an answer: knowledge-base pages, staff answers")
    staff_id: int | None = Field(None, description="an agent message's author (their name is in `names`)")

    @classmethod
    def shown(cls, message, sources: dict[str, list]) -> QueueMessage:
        shown = [Source.model_validate(source) for source in sources.get(message.id, [])]
        return cls.model_validate(message).model_copy(update={"sources": shown})


class QueueEntry(BaseModel):
    kind: str
    session_id: str
    message: QueueMessage
    context: list[QueueMessage]
    feedback: FeedbackState | None
    handoff: HandoffResponse | None
    corrections: list[CorrectionOut]

    @classmethod
    def of(cls, item: QueueItem, sources: dict[str, list]) -> QueueEntry:
        return cls(
            kind=item.kind,
            session_id=item.message.conversation_id,
            message=QueueMessage.shown(item.message, sources),
            context=[QueueMessage.shown(m, sources) for m in item.context],
            feedback=FeedbackState.model_validate(item.feedback) if item.feedback else None,
            handoff=HandoffResponse.model_validate(item.handoff) if item.handoff else None,
            corrections=[CorrectionOut.model_validate(c) for c in item.corrections],
        )


class QueueOut(BaseModel):
    total: int
    limit: int
    offset: int
    items: list[QueueEntry]
    versions: list[str] = Field(description="every adapter version that has answered (for the version filter)")
    names: dict[int, str] = Field(description="names of the staff who wrote or reviewed the corrections shown")


class ConversationMessage(QueueMessage):
    feedback: FeedbackState | None
    corrections: list[CorrectionOut]

    @classmethod
    def of(cls, message, found: ConversationReview, sources: dict[str, list]) -> ConversationMessage:
        vote = found.feedback.get(message.id)
        return cls(
            **QueueMessage.shown(message, sources).model_dump(),
            feedback=FeedbackState.model_validate(vote) if vote else None,
            corrections=[CorrectionOut.model_validate(c) for c in found.corrections.get(message.id, [])],
        )


class ConversationOut(BaseModel):
    id: str
    messages: list[ConversationMessage]
    handoffs: list[HandoffResponse]
    names: dict[int, str]


class StaffCreate(BaseModel):
    name: Name
    role: StaffRole = StaffRole.agent


class StaffUpdate(BaseModel):
    role: StaffRole | None = None
    disabled: bool | None = None


class StaffOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    role: StaffRole
    disabled: bool
    created_at: datetime


class StaffCreated(StaffOut):
    token: str  # shown once; only its hash is stored


class ActionOut(BaseModel):
    id: int
    staff_id: int
    action: str
    target: str
    detail: dict
    created_at: datetime


# agents ---------------------------------------------------------------------------------------


@router.get("/review", response_model=QueueOut)
def queue(
    session: SessionDep,
    _staff: StaffDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0, le=MAX_ROW_ID)] = 0,
    reason: Reason | None = None,
    version: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    q: Annotated[str | None, Query(max_length=200)] = None,
    include_reviewed: bool = False,
) -> QueueOut:
    """Answers to review: thumbs down first, then handoff requests, then recent answers."""
    page = review_queue(
        session,
        limit=limit,
        offset=offset,
        reason=reason,
        version=version,
        since=since,
        until=until,
        search=q,
        include_reviewed=include_reviewed,
    )
    names = staff_names(session, [c for i in page.items for c in i.corrections])
    sources = repo.sources_of(session, message_ids=[m.id for i in page.items for m in [i.message, *i.context]])
    return QueueOut(
        total=page.total,
        limit=limit,
        offset=offset,
        items=[QueueEntry.of(i, sources) for i in page.items],
        versions=answer_versions(session),
        names=names,
    )


@router.get("/conversations/{conversation_id}", response_model=ConversationOut)
def conversation(conversation_id: str, session: SessionDep, _staff: StaffDep) -> ConversationOut:
    """A whole conversation for staff: votes, corrections (approved ones replace the answer in training) and
    handoff requests."""
    found = conversation_review(session, conversation_id=conversation_id)
    sources = repo.sources_of(session, message_ids=[m.id for m in found.messages])
    return ConversationOut(
        id=conversation_id,
        messages=[ConversationMessage.of(m, found, sources) for m in found.messages],
        names=found.names,
        handoffs=[HandoffResponse.model_validate(h) for h in found.handoffs],
    )


@router.post("/messages/{message_id}/corrections", response_model=CorrectionOut, status_code=201)
def correct(message_id: str, body: CorrectionRequest, session: SessionDep, staff: StaffDep) -> CorrectionOut:
    return CorrectionOut.model_validate(
        repo.add_correction(
            session,
            message_id=message_id,
            actor=staff,
            text=body.text,
            approve=body.approve,
            reject=body.reject,
            based_on=body.based_on,
        )
    )


@router.get("/corrections", response_model=list[CorrectionOut])
def corrections(
    session: SessionDep, _staff: StaffDep, status: CorrectionStatus | None = None, message_id: str | None = None
) -> list[CorrectionOut]:
    found = repo.list_corrections(session, status=status, message_id=message_id)
    return [CorrectionOut.model_validate(c) for c in found]


@router.patch("/corrections/{correction_id}", response_model=CorrectionOut)
def edit(correction_id: RowId, body: CorrectionEdit, session: SessionDep, staff: StaffDep) -> CorrectionOut:
    return CorrectionOut.model_validate(
        repo.edit_correction(
            session,
            correction_id=correction_id,
            actor=staff,
            text=body.text,
            revision=body.revision,
            approve=body.approve,
        )
    )


@router.post("/corrections/{correction_id}/approve", response_model=CorrectionOut)
def approve(
    correction_id: RowId, session: SessionDep, staff: StaffDep, body: ReviewRequest | None = None
) -> CorrectionOut:
    return CorrectionOut.model_validate(
        repo.review_correction(
            session, correction_id=correction_id, actor=staff, approve=True, revision=body.revision if body else None
        )
    )


@router.post("/corrections/{correction_id}/reject", response_model=CorrectionOut)
def reject(
    correction_id: RowId, session: SessionDep, staff: StaffDep, body: ReviewRequest | None = None
) -> CorrectionOut:
    return CorrectionOut.model_validate(
        repo.review_correction(
            session, correction_id=correction_id, actor=staff, approve=False, revision=body.revision if body else None
        )
    )


# admins ---------------------------------------------------------------------------------------


@router.get("/staff", response_model=list[StaffOut])
def staff_list(session: SessionDep, _admin: AdminDep) -> list[StaffOut]:
    return [StaffOut.model_validate(s) for s in repo.list_staff(session)]


@router.post("/staff", response_model=StaffCreated, status_code=201)
def staff_create(body: StaffCreate, session: SessionDep, admin: AdminDep) -> StaffCreated:
    staff, token = repo.create_staff(session, name=body.name, role=body.role, actor=admin)
    return StaffCreated(**StaffOut.model_validate(staff).model_dump(), token=token)


@router.patch("/staff/{staff_id}", response_model=StaffOut)
def staff_update(staff_id: RowId, body: StaffUpdate, session: SessionDep, admin: AdminDep) -> StaffOut:
    return StaffOut.model_validate(
        repo.update_staff(session, staff_id=staff_id, actor=admin, role=body.role, disabled=body.disabled)
    )


@router.get("/audit", response_model=list[ActionOut])
def audit(
    session: SessionDep,
    _admin: AdminDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_ROW_ID)] = 0,
) -> list[ActionOut]:
    return [
        ActionOut(
            id=a.id,
            staff_id=a.staff_id,
            action=a.action,
            target=a.target,
            detail=json.loads(a.detail_json),
            created_at=a.created_at,
        )
        for a in repo.list_actions(session, limit=limit, offset=offset)
    ]
