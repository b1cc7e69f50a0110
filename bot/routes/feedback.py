"""What customers send besides chat: votes on answers and requests to talk to a human (no auth: the
ids are unguessable and only reach the customer who was served)."""
from __future__ import annotations

from fastapi import APIRouter

from bot.deps import SessionDep
from bot.protocol import FeedbackRequest, FeedbackResponse, HandoffRequest, HandoffResponse
from feedback import repo

router = APIRouter(prefix="/api")


@router.post("/messages/{message_id}/feedback", response_model=FeedbackResponse)
def give_feedback(message_id: str, body: FeedbackRequest, session: SessionDep) -> FeedbackResponse:
    vote = repo.set_feedback(session, message_id=message_id, thumb=body.thumb, reason=body.reason,
                             comment=body.comment)
    return FeedbackResponse.model_validate(vote)


@router.post("/sessions/{session_id}/handoff", response_model=HandoffResponse, status_code=201)
def ask_for_human(session_id: str, body: HandoffRequest, session: SessionDep) -> HandoffResponse:
    handoff = repo.request_handoff(session, conversation_id=session_id, note=body.note)
    return HandoffResponse.model_validate(handoff)
