"""Chat: `POST /api/chat`, `GET /api/sessions/{id}` and the WebSocket `/ws/chat` (protocol v2; v1 clients
are served too: they get an agent's messages as a `token` and a `done`, and no other live frame)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from contextlib import aclosing

from fastapi import APIRouter, HTTPException, Request, WebSocket, WebSocketDisconnect
from pydantic import ValidationError
from sqlalchemy.exc import InterfaceError, OperationalError
from starlette.websockets import WebSocketState

from bot.server.availability import availability
from bot.server.chat_service import ChatError, ChatService, Forwarded, Reply
from bot.server.deps import ChatDep, CustomerTokenDep, SessionDep, SessionToken, client_address
from bot.server.limits import LimitExceeded
from bot.server.live import conversation_topic
from bot.server.protocol import (
    SUPPORTED_PROTOCOLS,
    AgentJoinedFrame,
    AgentLeftFrame,
    AgentMessageFrame,
    AgentTypingFrame,
    CancelFrame,
    ChatRequest,
    ChatResponse,
    ClientFrame,
    DoneFrame,
    ErrorFrame,
    FeedbackState,
    HandoffFrame,
    HelloFrame,
    ReceivedFrame,
    SessionFrame,
    Source,
    TokenFrame,
    Transcript,
    TranscriptMessage,
    TypingFrame,
)
from feedback import handoffs, repo
from feedback.models import HandoffStatus, Role

log = logging.getLogger(__name__)
router = APIRouter()


@router.post("/api/chat", response_model=ChatResponse)
async def chat(body: ChatRequest, chat: ChatDep, request: Request, token: SessionToken = None) -> ChatResponse:
    """Answer one message. Without `session_id` (or with one whose secret is not in X-Session-Token) a new
    session is started: its id and secret come back, the secret this once."""
    try:
        chat.check_text(body.message, "rest")
        opened = await chat.open_session(body.session_id, token)
        session_id = opened.session_id
        async with aclosing(chat.reply(session_id, body.message, client=client_address(request), api="rest")) as reply:
            async for item in reply:
                if isinstance(item, Forwarded):
                    return ChatResponse(
                        session_id=session_id, session_token=opened.token, message_id=item.message_id, reply="",
                        adapter_version="human", agent=item.agent,
                    )  # fmt: skip
                if isinstance(item, Reply):
                    return ChatResponse(
                        session_id=session_id,
                        session_token=opened.token,
                        message_id=item.message_id,
                        reply=item.text,
                        adapter_version=item.adapter_version,
                        sources=_sources(item),
                    )
    except ChatError as exc:
        raise HTTPException(exc.status, exc.message) from exc
    raise HTTPException(503, "The model produced no answer; try again.")


@router.get("/api/sessions/{session_id}", response_model=Transcript)
def transcript(session_id: str, session: SessionDep, token: CustomerTokenDep) -> Transcript:
    """The customer's own session, with the secret given when it started (staff read conversations at
    `/api/conversations/{id}`)."""
    conversation = repo.customer_conversation(session, conversation_id=session_id, token=token)
    votes = repo.feedback_by_message(session, conversation_id=session_id)
    history = repo.list_messages(session, conversation_id=session_id)
    sources = repo.sources_of(session, message_ids=[m.id for m in history if m.role == Role.assistant])
    authors = repo.staff_names_by_id(session, ids=[m.staff_id for m in history if m.staff_id])
    messages = [
        TranscriptMessage(
            id=m.id,
            role=m.role.value,
            text=m.text,
            adapter_version=m.adapter_version,
            created_at=m.created_at,
            feedback=FeedbackState.model_validate(votes[m.id]) if m.id in votes else None,
            sources=[Source.model_validate(source) for source in sources.get(m.id, [])],
            author=authors.get(m.staff_id) if m.staff_id else None,
        )
        for m in history
    ]
    return Transcript(session_id=session_id, created_at=conversation.created_at, messages=messages)


def _frame_for(item: str | Reply) -> TokenFrame | DoneFrame:
    if isinstance(item, Reply):
        return DoneFrame(
            message_id=item.message_id,
            adapter_version=item.adapter_version,
            prompt_tokens=item.prompt_tokens,
            completion_tokens=item.completion_tokens,
            ttft_ms=item.ttft_ms,
            total_ms=item.total_ms,
            sources=_sources(item),
        )
    return TokenFrame(text=item)


def _sources(reply: Reply) -> list[Source]:
    return [Source(**source) for source in reply.sources]


class _Connection:
    """One WebSocket connection: at most one session, announced once; at most one answer streaming,
    which a `cancel` frame (or the client leaving) stops at the next generation step."""

    def __init__(self, ws: WebSocket, chat: ChatService, max_frame_chars: int) -> None:
        self.ws, self.chat, self.max_frame_chars = ws, chat, max_frame_chars
        self.client = client_address(ws)
        self.session_id: str | None = None
        self.protocol = 1  # until a hello asks for more
        self.answer: asyncio.Task | None = None
        self.pump: asyncio.Task | None = None  # live events of the session (a person handling it)
        self._typing_at = 0.0
        self._send_lock = asyncio.Lock()

    async def send(self, frame) -> None:
        async with self._send_lock:
            await self.ws.send_text(frame.model_dump_json())

    async def error(self, code: str, message: str) -> None:
        await self.send(ErrorFrame(code=code, message=message))

    async def handle(self, raw: str) -> None:
        if len(raw) > self.max_frame_chars:
            return await self.error("frame_too_large", f"Frames are limited to {self.max_frame_chars} characters.")
        try:
            frame = ClientFrame.validate_json(raw)
        except ValidationError as exc:
            if '"agent_' in raw[:200]:
                return await self.error("bad_frame", "agent_* frames come from staff; a chat client cannot send them.")
            reason = exc.errors()[0].get("msg", "invalid frame")
            return await self.error("bad_frame", f"Malformed or unknown frame: {reason}.")
        if isinstance(frame, HelloFrame):
            return await self._hello(frame)
        if isinstance(frame, CancelFrame):
            return await self._cancel()
        if isinstance(frame, TypingFrame):
            return await self._typing()
        await self._start_answer(frame.text)

    async def _hello(self, frame: HelloFrame) -> None:
        if self.session_id is not None:
            return await self.error("already_started", "hello must come before the first message.")
        if frame.protocol not in SUPPORTED_PROTOCOLS:
            return await self.error(
                "unsupported_protocol",
                f"Protocol {frame.protocol} is not supported; "
                f"this server speaks {', '.join(map(str, SUPPORTED_PROTOCOLS))}.",
            )
        self.protocol = frame.protocol
        await self._announce(frame.session_id, frame.session_token)

    async def _announce(self, wanted: str | None, token: str | None = None) -> None:
        opened = await self.chat.open_session(wanted, token)
        self.session_id, resumed = opened.session_id, opened.token is None
        if wanted is not None and not resumed:
            await self.error(
                "unknown_session",
                "That session does not exist, has expired or needs its session_token; a new one was started.",
            )
        self.pump = asyncio.create_task(self._pump_live(self.session_id))
        await self.send(
            SessionFrame(
                session_id=self.session_id, protocol=self.protocol, resumed=resumed, session_token=opened.token
            )
        )
        if resumed and self.protocol >= 2:
            await self._send_handoff_state()

    async def _send_handoff_state(self) -> None:
        state = await asyncio.to_thread(self._live_state)
        if state is not None:
            taken = state.status == HandoffStatus.taken
            found = availability(self.chat.settings.hours(), self.chat.live.consoles_online())
            await self.send(HandoffFrame(status="taken" if taken else "waiting", agent=state.agent, position=state.position,
                                         available=taken or found.available, message=None if taken else found.message))  # fmt: skip

    def _live_state(self) -> handoffs.LiveState | None:
        with self.chat.store.session() as session:
            return handoffs.live_state(session, conversation_id=self.session_id)

    async def _pump_live(self, session_id: str) -> None:
        """What the person handling the session says and does, as frames (v1: their messages only)."""
        with self.chat.live.subscribe(conversation_topic(session_id)) as subscription:
            async for event in subscription.events():
                for frame in _customer_frames(event, self.protocol):
                    await self.send(frame)

    async def _typing(self) -> None:
        if self.session_id is None or time.monotonic() - self._typing_at < 1.0:
            return  # at most one a second reaches the agent
        self._typing_at = time.monotonic()
        event = {"type": "customer_typing", "session_id": self.session_id}
        await self.chat.live.publish_async(conversation_topic(self.session_id), event)

    async def _cancel(self) -> None:
        if self.answer is None or self.answer.done():
            return await self.error("nothing_to_cancel", "No answer is being generated.")
        self.answer.cancel()
        await asyncio.gather(self.answer, return_exceptions=True)

    async def _start_answer(self, text: str) -> None:
        if self.answer is not None and not self.answer.done():
            return await self.error("answer_in_progress", "Wait for the current answer, or cancel it first.")
        try:
            text = self.chat.check_text(text, "ws")
        except ChatError as exc:
            return await self.error(exc.code, exc.message)
        if self.session_id is None:
            await self._announce(None)
        self.answer = asyncio.create_task(self._answer(text))

    async def _answer(self, text: str) -> None:
        try:
            async with aclosing(self.chat.reply(self.session_id, text, client=self.client, api="ws")) as reply:
                async for item in reply:
                    if isinstance(item, Forwarded):
                        if self.protocol >= 2:
                            await self.send(ReceivedFrame(message_id=item.message_id))
                        continue
                    await self.send(_frame_for(item))
        except ChatError as exc:
            await self.error(exc.code, exc.message)
        except (OperationalError, InterfaceError):
            log.warning("database unavailable during an answer", exc_info=True)
            await self.error("store_unavailable", "The database is unavailable right now; try again shortly.")
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await self.error("cancelled", "The answer was cancelled.")
        except Exception:
            if self._gone():  # the client left while the answer streamed: nobody to tell
                log.debug("answer stream ended early", exc_info=True)
                return
            log.exception("answer failed")  # a bug: the team needs the traceback; the client a clear frame
            with contextlib.suppress(Exception):
                await self.error("internal", "The server failed to answer; please try again.")

    def _gone(self) -> bool:
        return WebSocketState.DISCONNECTED in (self.ws.client_state, self.ws.application_state)

    async def close(self) -> None:
        for task in (self.answer, self.pump):
            if task is not None and not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)


def _customer_frames(event: dict, protocol: int) -> list:
    """The frames a customer's client gets for a live event (none for what staff alone see)."""
    kind = event.get("type")
    if kind == "agent_message":
        if protocol < 2:  # an old client shows it as an answer (it cannot be voted on)
            done = DoneFrame(message_id=event["message_id"], adapter_version="human", prompt_tokens=0,
                             completion_tokens=0, ttft_ms=0.0, total_ms=0.0)  # fmt: skip
            return [TokenFrame(text=event["text"]), done]
        return [AgentMessageFrame(message_id=event["message_id"], text=event["text"], name=event["name"])]
    if protocol < 2:
        return []
    if kind == "agent_joined":
        return [AgentJoinedFrame(name=event["name"])]
    if kind == "agent_left":
        return [AgentLeftFrame(name=event["name"], reason=event["reason"])]
    if kind == "agent_typing":
        return [AgentTypingFrame(name=event["name"])]
    if kind == "handoff_waiting":
        return [HandoffFrame(status="waiting", position=event.get("position"), available=event.get("available", True),
                             message=event.get("message"))]  # fmt: skip
    return []


def _origin_allowed(ws: WebSocket) -> bool:
    allowed = ws.app.state.settings.allowed_origins
    origin = ws.headers.get("origin")
    return "*" in allowed or origin is None or origin in allowed


async def _refuse_socket(ws: WebSocket, code: str, message: str) -> None:
    await ws.send_text(ErrorFrame(code=code, message=message).model_dump_json())
    await ws.close(code=1008)


@router.websocket("/ws/chat")
async def chat_socket(ws: WebSocket) -> None:
    await ws.accept()
    if not _origin_allowed(ws):
        return await _refuse_socket(
            ws, "origin_not_allowed", "This site may not embed the chat (add it to SUPPORTLOOP_ALLOWED_ORIGINS)."
        )
    limits, client = ws.app.state.limits, client_address(ws)
    try:
        limits.connect(client)
    except LimitExceeded as exc:
        return await _refuse_socket(ws, exc.code, exc.message)
    try:
        await _serve_socket(ws)
    finally:
        limits.disconnect(client)


async def _serve_socket(ws: WebSocket) -> None:
    connection = _Connection(ws, ws.app.state.chat, ws.app.state.settings.max_frame_chars)
    try:
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("text") is None:
                await connection.error("bad_frame", "Frames must be JSON text, not binary.")
                continue
            await connection.handle(message["text"])
    except WebSocketDisconnect:
        return
    except Exception:
        log.exception("websocket handler failed")
        with contextlib.suppress(Exception):
            await connection.error("internal", "The server failed to answer; please try again.")
            await ws.close(code=1011)
    finally:
        await connection.close()
