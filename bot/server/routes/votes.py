"""Customers' votes on answers: only in their own session, shown by its secret (`X-Session-Token`);
another session's answer looks like no answer at all (404). Requests to talk to a human are in
`routes/handoffs.py`.

Votes are the hottest write path (every thumb from every widget). They are group-committed
(`feedback.ingest`), and `VoteIngest` answers them before FastAPI's routing, which otherwise costs
about half of each request's CPU on a 2-core machine (`bench/votes.py`; numbers in docs/performance.md). The FastAPI route below documents the same endpoint in OpenAPI and shares
`store_vote`, so both paths validate, store and answer identically.
"""

from __future__ import annotations

import json
import re

from fastapi import APIRouter, Request
from pydantic import ValidationError
from starlette.datastructures import Headers

from bot.server.deps import NO_SESSION_TOKEN, SESSION_TOKEN_HEADER, CustomerTokenDep
from bot.server.errors import HANDLED, error_reply
from bot.server.protocol import MAX_SESSION_TOKEN, FeedbackRequest, FeedbackResponse
from feedback import repo

router = APIRouter(prefix="/api")
MAX_VOTE_BYTES = 1 << 20  # a vote's comment is at most 2,000 characters; larger bodies are refused


async def store_vote(app, message_id: str, body: FeedbackRequest, token: str) -> FeedbackResponse:
    """Store the vote (group commit) if `token` is the secret of the answer's session; the reply comes
    once it is committed."""
    stored = await app.state.votes.submit(repo.Vote(message_id, body.thumb, body.reason, body.comment, token))
    return FeedbackResponse(
        message_id=stored.message_id, thumb=stored.thumb, reason=stored.reason, comment=stored.comment
    )


@router.post("/messages/{message_id}/feedback", response_model=FeedbackResponse)
async def give_feedback(
    message_id: str, body: FeedbackRequest, request: Request, token: CustomerTokenDep
) -> FeedbackResponse:
    """Thumbs up or down on an answer of the customer's session, with an optional reason (thumbs down) and
    comment; a later vote on the same answer replaces the earlier one. (Served by `VoteIngest`.)"""
    return await store_vote(request.app, message_id, body, token)


class VoteIngest:
    """ASGI middleware: `POST /api/messages/{id}/feedback` without FastAPI's per-request machinery;
    everything else passes through."""

    PATH = re.compile(r"/api/messages/([^/]+)/feedback")

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        match = self.PATH.fullmatch(scope.get("path", "")) if scope["type"] == "http" else None
        if match is None or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        status, body, headers = await self._vote(scope, receive, match.group(1))
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        raw = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        raw += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": payload})

    async def _vote(self, scope, receive, message_id: str) -> tuple[int, bytes | dict, dict]:
        raw = await _read_body(receive)
        if raw is None:
            return 413, {"detail": f"A vote is at most {MAX_VOTE_BYTES} bytes."}, {}
        token = Headers(scope=scope).get(SESSION_TOKEN_HEADER)
        if not token:
            return 401, {"detail": NO_SESSION_TOKEN}, {}
        if len(token) > MAX_SESSION_TOKEN:
            return 422, {"detail": f"{SESSION_TOKEN_HEADER} is at most {MAX_SESSION_TOKEN} characters."}, {}
        try:
            body = FeedbackRequest.model_validate_json(raw)
        except ValidationError as exc:  # the same shape as FastAPI's 422
            errors = exc.errors(include_url=False, include_context=False, include_input=False)
            return 422, {"detail": [{**e, "loc": ["body", *e["loc"]]} for e in errors]}, {}
        try:
            reply = await store_vote(scope["app"], message_id, body, token)
        except HANDLED as exc:
            return error_reply(exc)
        return 200, reply.model_dump_json().encode(), {}


async def _read_body(receive) -> bytes | None:
    chunks, size = [], 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_VOTE_BYTES:
            return None
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)
