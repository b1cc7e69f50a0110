"""Feedback from customers (no auth) and corrections from staff (bearer token)."""
from __future__ import annotations

from fastapi import APIRouter, HTTPException

from bot.deps import SessionDep, StaffDep
from bot.protocol import CorrectionRequest, CorrectionResponse, FeedbackRequest, FeedbackResponse
from feedback import repo

router = APIRouter(prefix="/api/messages")


@router.post("/{message_id}/feedback", response_model=FeedbackResponse)
def give_feedback(message_id: str, body: FeedbackRequest, session: SessionDep) -> FeedbackResponse:
    vote = repo.set_feedback(session, message_id=message_id, thumb=body.thumb,
                             reason=body.reason, comment=body.comment)
    return FeedbackResponse.model_validate(vote)


@router.post("/{message_id}/corrections", response_model=CorrectionResponse, status_code=201)
def correct(message_id: str, body: CorrectionRequest, session: SessionDep, staff: StaffDep) -> CorrectionResponse:
    try:
        correction = repo.add_correction(session, message_id=message_id, staff_id=staff.id,
                                         text=body.text, approve=body.approve)
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from exc
    return CorrectionResponse(id=correction.id, message_id=message_id, text=correction.text,
                              status=correction.status.value, staff=staff.name)
