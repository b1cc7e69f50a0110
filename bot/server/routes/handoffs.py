"""Human handoff: the customer asks for a person (`POST /api/sessions/{id}/handoff`), staff see the
inbox, take a conversation over, chat with the customer live, and hand it back to the bot or close it.
Live events go through `bot.server.live` to the customer's socket and to the consoles (`/ws/staff`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from datetime import datetime
from typing import Annotated, Any, Literal, cast

from fastapi import APIRouter, Request, WebSocket, WebSocketDisconnect
from pydantic import BaseModel, Field, StringConstraints, TypeAdapter, ValidationError
from sqlmodel import Session

from bot.server.availability import Availability, availability
from bot.server.deps import LOGIN_COOKIE, CustomerTokenDep, RowId, SessionDep, StaffDep, same_origin
from bot.server.live import STAFF_TOPIC, LiveBus, conversation_topic
from bot.server.protocol import HandoffRequest, HandoffResponse
from feedback import handoffs, repo
from feedback.logins import find_login
from feedback.models import Handoff, HandoffOutcome, HandoffStatus, Staff, utcnow

log = logging.getLogger(__name__)
router = APIRouter()
AGENT_MESSAGE_CHARS = 4000
EMAIL = r"^[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+$"  # something a person can write back to; not a full RFC 5322 check
AgentText = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=AGENT_MESSAGE_CHARS)]


class InboxItem(HandoffResponse):
    agent: str | None = Field(None, description="who has the conversation, once taken")
    contact_email: str | None = Field(None, description="left by the customer when nobody was available")
    assigned_at: datetime | None = None
    waiting_s: float = Field(description="seconds since the customer asked (until taken)")
    outcome: str | None = None


class AvailabilityOut(BaseModel):
    available: bool
    message: str | None = Field(None, description="when nobody is available: why, for the customer")


class ContactRequest(BaseModel):
    email: Annotated[str, StringConstraints(strip_whitespace=True, max_length=254, pattern=EMAIL)]


class ContactOut(BaseModel):
    handoff_id: int
    email: str


class TakeRequest(BaseModel):
    reassign: bool = Field(False, description="admins: take it from the agent who has it")


class AgentMessageRequest(BaseModel):
    text: AgentText


class AgentMessageOut(BaseModel):
    message_id: str
    created_at: datetime
    draft_correction_id: int | None = Field(
        None,
        description="the draft correction of the rejected bot turn this reply feeds (never approved automatically)",
    )


def _bus(request: Request | WebSocket) -> LiveBus:
    return request.app.state.chat.live


def _item(session: Session, handoff: Handoff) -> InboxItem:
    names = repo.staff_names_by_id(session, ids=[handoff.assigned_to] if handoff.assigned_to else [])
    until = handoff.assigned_at or handoff.closed_at or utcnow()
    return InboxItem.model_validate(
        {
            **handoff.model_dump(),
            "position": handoffs.position(session, handoff),
            "agent": names.get(handoff.assigned_to) if handoff.assigned_to else None,
            "waiting_s": round((until - handoff.created_at).total_seconds(), 1),
        }
    )


def _inbox_changed(bus: LiveBus, handoff: Handoff) -> None:
    bus.publish(STAFF_TOPIC, {"type": "inbox", "handoff_id": handoff.id, "status": handoff.status.value})


def _waiting(position: int | None, found: Availability) -> dict[str, Any]:
    return {"type": "handoff_waiting", "position": position, "available": found.available, "message": found.message}


def _queue_moved(request: Request, session: Session) -> None:
    """Every waiting customer's new place, once a request left the queue."""
    waiting, found = handoffs.list_handoffs(session, statuses=(HandoffStatus.open,)), _availability(request)
    for place, handoff in enumerate(waiting, start=1):
        _bus(request).publish(conversation_topic(handoff.conversation_id), _waiting(place, found))


def _availability(request: Request) -> Availability:
    return availability(request.app.state.settings.hours(), _bus(request).consoles_online())


# customers ---------------------------------------------------------------------------------------


@router.get("/api/handoff/availability", response_model=AvailabilityOut)
def can_talk_to_a_person(request: Request) -> AvailabilityOut:
    """Whether a person can take a conversation now: within the opening hours, with a console connected."""
    found = _availability(request)
    return AvailabilityOut(available=found.available, message=found.message)


@router.post("/api/sessions/{session_id}/handoff", response_model=HandoffResponse, status_code=201)
def ask_for_human(
    session_id: str, body: HandoffRequest, session: SessionDep, request: Request, token: CustomerTokenDep
) -> HandoffResponse:
    """The customer asks for a person: waiting in the inbox (asking again returns the same request).
    When nobody is available (`available` false, with the reason) the widget offers to leave an email."""
    repo.customer_conversation(session, conversation_id=session_id, token=token)
    handoff = handoffs.request_handoff(session, conversation_id=session_id, note=body.note)
    found = _availability(request)
    reply = HandoffResponse.model_validate({**handoff.model_dump(), "position": handoffs.position(session, handoff),
                                            "available": found.available, "message": found.message})  # fmt: skip
    _inbox_changed(_bus(request), handoff)
    if handoff.status == HandoffStatus.open:
        _bus(request).publish(conversation_topic(session_id), _waiting(reply.position, found))
    return reply


@router.post("/api/sessions/{session_id}/contact", response_model=ContactOut, status_code=201)
def leave_email(
    session_id: str, body: ContactRequest, session: SessionDep, request: Request, token: CustomerTokenDep
) -> ContactOut:
    """Nobody was available: an email for staff to write back to, kept with the request (personal data:
    shown to staff in the inbox, never exported for training)."""
    repo.customer_conversation(session, conversation_id=session_id, token=token)
    handoff = handoffs.leave_contact(session, conversation_id=session_id, email=body.email)
    _inbox_changed(_bus(request), handoff)
    return ContactOut(handoff_id=cast(int, handoff.id), email=body.email)


# staff -------------------------------------------------------------------------------------------


@router.get("/api/handoffs", response_model=list[InboxItem])
def inbox(session: SessionDep, _staff: StaffDep, include_closed: bool = False) -> list[InboxItem]:
    """Waiting and taken conversations, the longest-waiting first (`include_closed`: all)."""
    found = handoffs.list_handoffs(session, statuses=None if include_closed else handoffs.LIVE)
    return [_item(session, h) for h in found]


@router.post("/api/handoffs/{handoff_id}/take", response_model=InboxItem)
def take(
    handoff_id: RowId, session: SessionDep, staff: StaffDep, request: Request, body: TakeRequest | None = None
) -> InboxItem:
    """Take the conversation over: the bot stops answering it. 409 naming the owner when someone else
    has it (admins may `reassign`), or when it is closed."""
    before = handoffs.get_handoff(session, handoff_id=handoff_id).assigned_to
    handoff = handoffs.take(session, handoff_id=handoff_id, actor=staff, reassign=bool(body and body.reassign))
    if before != staff.id:
        _bus(request).publish(conversation_topic(handoff.conversation_id), {"type": "agent_joined", "name": staff.name})
    _inbox_changed(_bus(request), handoff)
    if before is None:
        _queue_moved(request, session)
    return _item(session, handoff)


def _end(handoff_id: int, session: Session, staff: Staff, request: Request, outcome: HandoffOutcome) -> InboxItem:
    was_taken = handoffs.get_handoff(session, handoff_id=handoff_id).status == HandoffStatus.taken
    handoff = handoffs.end(session, handoff_id=handoff_id, actor=staff, outcome=outcome)
    if was_taken:
        event = {"type": "agent_left", "name": staff.name, "reason": outcome.value}
        _bus(request).publish(conversation_topic(handoff.conversation_id), event)
    else:
        _queue_moved(request, session)
    _inbox_changed(_bus(request), handoff)
    return _item(session, handoff)


@router.post("/api/handoffs/{handoff_id}/hand-back", response_model=InboxItem)
def hand_back(handoff_id: RowId, session: SessionDep, staff: StaffDep, request: Request) -> InboxItem:
    """Give the conversation back to the bot: it answers the customer's next message."""
    return _end(handoff_id, session, staff, request, HandoffOutcome.handed_back)


@router.post("/api/handoffs/{handoff_id}/close", response_model=InboxItem)
def close(handoff_id: RowId, session: SessionDep, staff: StaffDep, request: Request) -> InboxItem:
    """Close the request (waiting or taken); a taken one only by its owner or an admin."""
    return _end(handoff_id, session, staff, request, HandoffOutcome.closed)


@router.post("/api/handoffs/{handoff_id}/messages", response_model=AgentMessageOut, status_code=201)
def reply(
    handoff_id: RowId, body: AgentMessageRequest, session: SessionDep, staff: StaffDep, request: Request
) -> AgentMessageOut:
    """Send the customer a message (stored with role `agent` and the author), streamed to their widget."""
    message, draft = handoffs.agent_reply(session, handoff_id=handoff_id, actor=staff, text=body.text)
    event = {"type": "agent_message", "session_id": message.conversation_id, "message_id": message.id,
             "text": message.text, "name": staff.name}  # fmt: skip
    _bus(request).publish(conversation_topic(message.conversation_id), event)
    return AgentMessageOut(message_id=message.id, created_at=message.created_at,
                           draft_correction_id=draft.id if draft else None)  # fmt: skip


# the consoles' live socket -----------------------------------------------------------------------


class _Watch(BaseModel):
    type: Literal["watch", "unwatch", "typing"]
    session_id: str = Field(max_length=64)


StaffFrame = TypeAdapter(_Watch)


def _socket_staff(ws: WebSocket) -> Staff | None:
    """The staff member of a console socket: the login cookie (from this server's own pages) or a bearer
    token (scripts); None when neither is valid or the account is disabled."""
    with ws.app.state.store.session() as session:
        staff: Staff | None = None
        header = ws.headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            staff = repo.staff_by_token(session, token=header[7:].strip())
        elif LOGIN_COOKIE in ws.cookies and same_origin(ws):  # type: ignore[arg-type]  # HTTPConnection
            found = find_login(session, token=ws.cookies[LOGIN_COOKIE])
            staff = found[0] if found else None
        return staff if staff is not None and not staff.disabled else None


@router.websocket("/ws/staff")
async def staff_socket(ws: WebSocket) -> None:
    """Inbox changes for every console; the live events of the conversations a console watches."""
    await ws.accept()
    staff = await asyncio.to_thread(_socket_staff, ws)
    if staff is None:
        await ws.send_text(json.dumps({"type": "error", "code": "unauthorized",
                                       "message": "Log in to the console, or send a staff bearer token."}))  # fmt: skip
        return await ws.close(code=1008)
    bus = _bus(ws)
    await bus.console_connected(+1)
    with bus.subscribe(STAFF_TOPIC) as subscription:
        pump = asyncio.create_task(_pump(ws, subscription))
        try:
            await ws.send_text(json.dumps({"type": "hello", "name": staff.name, "role": staff.role.value}))
            await _serve_staff(ws, staff, bus, subscription)
        except WebSocketDisconnect:
            pass
        finally:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pump
            await bus.console_connected(-1)


async def _pump(ws: WebSocket, subscription: Any) -> None:
    async for event in subscription.events():
        await ws.send_text(json.dumps(event))


async def _serve_staff(ws: WebSocket, staff: Staff, bus: LiveBus, subscription: Any) -> None:
    typed_at: dict[str, float] = {}  # per conversation: at most one typing event a second goes out
    while True:
        raw = await ws.receive_text()
        try:
            frame = StaffFrame.validate_json(raw)
        except ValidationError as exc:
            reason = exc.errors()[0].get("msg", "invalid frame")
            await ws.send_text(
                json.dumps({"type": "error", "code": "bad_frame", "message": f"Malformed frame: {reason}."})
            )
            continue
        topic = conversation_topic(frame.session_id)
        if frame.type == "watch":
            subscription.add(topic)
            await ws.send_text(json.dumps({"type": "watching", "session_id": frame.session_id}))
        elif frame.type == "unwatch":
            subscription.discard(topic)
        elif time.monotonic() - typed_at.get(frame.session_id, 0.0) >= 1.0:
            typed_at[frame.session_id] = time.monotonic()
            await bus.publish_async(topic, {"type": "agent_typing", "session_id": frame.session_id, "name": staff.name})
