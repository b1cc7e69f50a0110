"""Chat: `POST /api/chat` and the WebSocket `/ws/chat`."""
from __future__ import annotations

import contextlib
import logging
from contextlib import aclosing

from fastapi import APIRouter, HTTPException, WebSocket, WebSocketDisconnect
from pydantic import ValidationError

from bot.chat import ChatError, ChatService, Reply
from bot.deps import ChatDep
from bot.protocol import (
    ChatRequest, ChatResponse, ClientFrame, DoneFrame, ErrorFrame, HelloFrame, SessionFrame, TokenFrame,
)

log = logging.getLogger(__name__)
router = APIRouter()


@router.post("/api/chat", response_model=ChatResponse)
async def chat(body: ChatRequest, chat: ChatDep) -> ChatResponse:
    try:
        session_id = await chat.open_session(body.session_id)
        async with aclosing(chat.reply(session_id, body.message)) as reply:
            async for item in reply:
                if isinstance(item, Reply):
                    return ChatResponse(session_id=session_id, message_id=item.message_id,
                                        reply=item.text, adapter_version=item.adapter_version)
    except ChatError as exc:
        raise HTTPException(exc.status, exc.message) from exc
    raise HTTPException(503, "The model produced no answer; try again.")


def _frame_for(item: str | Reply) -> TokenFrame | DoneFrame:
    if isinstance(item, Reply):
        return DoneFrame(message_id=item.message_id, adapter_version=item.adapter_version,
                         prompt_tokens=item.prompt_tokens, completion_tokens=item.completion_tokens)
    return TokenFrame(text=item)


async def _send_error(ws: WebSocket, code: str, message: str) -> None:
    await ws.send_text(ErrorFrame(code=code, message=message).model_dump_json())


class _Connection:
    """One WebSocket connection: at most one session, announced once."""

    def __init__(self, ws: WebSocket, chat: ChatService) -> None:
        self.ws, self.chat, self.session_id = ws, chat, None

    async def _announce(self, wanted: str | None) -> None:
        self.session_id = await self.chat.open_session(wanted)
        await self.ws.send_text(SessionFrame(session_id=self.session_id).model_dump_json())

    async def handle(self, raw: str) -> None:
        try:
            frame = ClientFrame.validate_json(raw)
        except ValidationError as exc:
            reason = exc.errors()[0].get("msg", "invalid frame")
            await _send_error(self.ws, "bad_frame", f"Malformed or unknown frame: {reason}.")
            return
        if isinstance(frame, HelloFrame):
            if self.session_id is not None:
                await _send_error(self.ws, "already_started", "hello must come before the first message.")
                return
            await self._announce(frame.session_id)
            return
        await self._answer(frame.text)

    async def _answer(self, text: str) -> None:
        try:
            text = self.chat.check_text(text)
            if self.session_id is None:
                await self._announce(None)
            async with aclosing(self.chat.reply(self.session_id, text)) as reply:
                async for item in reply:
                    await self.ws.send_text(_frame_for(item).model_dump_json())
        except ChatError as exc:
            await _send_error(self.ws, exc.code, exc.message)


@router.websocket("/ws/chat")
async def chat_socket(ws: WebSocket) -> None:
    await ws.accept()
    connection = _Connection(ws, ws.app.state.chat)
    try:
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("text") is None:
                await _send_error(ws, "bad_frame", "Frames must be JSON text, not binary.")
                continue
            await connection.handle(message["text"])
    except WebSocketDisconnect:
        return
    except Exception:  # noqa: BLE001 — log it, tell the client without a trace, close cleanly
        log.exception("websocket handler failed")
        with contextlib.suppress(Exception):
            await _send_error(ws, "internal", "The server failed to answer; please try again.")
            await ws.close(code=1011)
