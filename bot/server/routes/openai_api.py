"""The OpenAI-compatible API: `POST /v1/chat/completions` (plain and SSE streaming) and `GET /v1/models`.

Any OpenAI client works unchanged. `model` picks a version: `supportloop` (the active one), `base`,
or the active adapter's version. Answers are stored like chat answers, and every response carries
supportloop's ids (`supportloop.message_id`) so that feedback can be attached to it."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Annotated, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from bot.server.chat_service import ChatError, ChatService, Reply
from bot.server.deps import ChatDep, client_address
from feedback.registry import BASE_VERSION

router = APIRouter(prefix="/v1")
ALIAS = "supportloop"


class OpenAIError(Exception):
    """Rendered in OpenAI's error shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(
        self, status: int, message: str, code: str, param: str | None = None, kind: str = "invalid_request_error"
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param, self.kind = status, message, code, param, kind

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status)


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str | list[TextPart]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class StreamOptions(BaseModel):
    include_usage: bool = False


class CompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = ALIAS
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=200)]
    max_tokens: int | None = Field(None, ge=1, le=4096)
    max_completion_tokens: int | None = Field(None, ge=1, le=4096)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None
    n: int = Field(1, ge=1, le=1, description="only one choice is supported")
    stream: bool = False
    stream_options: StreamOptions | None = None


def _model_entry(name: str) -> dict:
    return {"id": name, "object": "model", "created": 0, "owned_by": "supportloop"}


@router.get("/models")
def list_models(request: Request) -> dict:
    active = request.app.state.adapters.active_version
    names = [ALIAS, BASE_VERSION] + ([active] if active != BASE_VERSION else [])
    return {"object": "list", "data": [_model_entry(n) for n in names]}


def _version(name: str, active: str) -> str:
    if name == ALIAS:
        return active
    if name in (BASE_VERSION, active):
        return name
    raise OpenAIError(
        404,
        f"The model `{name}` does not exist or is not being served; GET /v1/models lists the models you can use.",
        "model_not_found",
        "model",
    )


def _check(body: CompletionRequest, chat: ChatService) -> list[dict]:
    messages = [{"role": m.role, "content": m.text()} for m in body.messages]
    if messages[-1]["role"] != "user":
        raise OpenAIError(400, "The last message must come from the user.", "invalid_messages", "messages")
    for m in messages:
        if len(m["content"]) > chat.settings.max_message_chars:
            raise OpenAIError(
                400,
                f"A message has {len(m['content'])} characters; the limit is {chat.settings.max_message_chars}.",
                "message_too_long",
                "messages",
            )
    try:  # the same rules as every other chat message (and the same refusal metrics)
        chat.check_text(messages[-1]["content"], "openai")
    except ChatError as exc:
        raise OpenAIError(400, exc.message, exc.code, "messages") from exc
    return messages


def _stream_for(body: CompletionRequest, chat: ChatService, version: str, client: str) -> AsyncIterator[str | Reply]:
    settings = chat.settings
    stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
    return chat.complete(
        _check(body, chat),
        client=client,
        version=version,
        max_new_tokens=body.max_completion_tokens or body.max_tokens or settings.max_new_tokens,
        temperature=settings.temperature if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        stop=stop,
    )


def _ids(reply: Reply) -> dict:
    return {
        "message_id": reply.message_id,
        "session_id": reply.session_id,
        "session_token": reply.session_token,
        "adapter_version": reply.adapter_version,
        "sources": list(reply.sources),
    }


def _usage(reply: Reply) -> dict:
    return {
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": reply.completion_tokens,
        "total_tokens": reply.prompt_tokens + reply.completion_tokens,
    }


def _finish(reply: Reply) -> str:
    return "length" if reply.finish_reason == "length" else "stop"


async def _first(stream: AsyncIterator[str | Reply]) -> str | Reply:
    """The first item, so that refusals (busy, loading) become a proper HTTP error before streaming."""
    try:
        return await anext(stream)
    except ChatError as exc:
        await stream.aclose()
        raise OpenAIError(
            400 if exc.status == 422 else exc.status,
            exc.message,
            exc.code,
            kind="rate_limit_error" if exc.status == 429 else "invalid_request_error",
        ) from exc


async def _prepend(first: str | Reply, rest: AsyncIterator[str | Reply]) -> AsyncIterator[str | Reply]:
    yield first
    async for item in rest:
        yield item


@router.post(
    "/chat/completions",
    responses={
        200: {
            "description": "the completion (JSON), or with `stream: true` its chunks as server-sent events",
            "content": {"application/json": {}, "text/event-stream": {}},
        }
    },
)
async def chat_completions(body: CompletionRequest, chat: ChatDep, request: Request):
    version = _version(body.model, chat.adapters.active_version)
    stream = _stream_for(body, chat, version, client_address(request))
    first = await _first(stream)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(_sse(_prepend(first, stream), version, include_usage), media_type="text/event-stream")
    async with aclosing(_prepend(first, stream)) as items:
        reply = [item async for item in items][-1]
    return {
        "id": f"chatcmpl-{reply.message_id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": version,
        "choices": [
            {"index": 0, "finish_reason": _finish(reply), "message": {"role": "assistant", "content": reply.text}}
        ],
        "usage": _usage(reply),
        "supportloop": _ids(reply),
    }


def _chunk(stream_id: str, model: str, choices: list, **extra) -> str:
    body = {
        "id": stream_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        **extra,
    }
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


def _choice(delta: dict, finish: str | None = None) -> list:
    return [{"index": 0, "delta": delta, "finish_reason": finish}]


async def _sse(items: AsyncIterator[str | Reply], model: str, include_usage: bool) -> AsyncIterator[str]:
    """Chunks as the answer is generated; the last one carries the finish reason and supportloop's ids
    (the message id exists only once the answer is stored, so the stream id is the request's own)."""
    stream_id = f"chatcmpl-{uuid.uuid4().hex}"
    yield _chunk(stream_id, model, _choice({"role": "assistant", "content": ""}))
    async with aclosing(items):
        async for item in items:
            if not isinstance(item, Reply):
                yield _chunk(stream_id, model, _choice({"content": item}))
                continue
            yield _chunk(stream_id, model, _choice({}, _finish(item)), supportloop=_ids(item))
            if include_usage:
                yield _chunk(stream_id, model, [], usage=_usage(item))
    yield "data: [DONE]\n\n"
