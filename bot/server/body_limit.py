"""Request bodies over a size limit are refused with 413 before they are read whole: at once when the
declared `Content-Length` is too large, else as soon as the bytes streamed in pass the limit (the rest is
never read). Knowledge-base uploads (admins) have a limit of their own."""

from __future__ import annotations

import contextlib
import json

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyLimit:
    """Pure ASGI middleware; `limits` maps a path prefix to its own limit (the longest prefix wins)."""

    def __init__(self, app: ASGIApp, default: int, limits: dict[str, int] | None = None) -> None:
        self.app, self.default, self.limits = app, default, limits or {}

    def limit_for(self, path: str) -> int:
        prefixes = [p for p in self.limits if path.startswith(p)]
        return self.limits[max(prefixes, key=len)] if prefixes else self.default

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.limit_for(scope["path"])
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return await _refuse(send, limit)
        received, answered, refused = 0, False, False

        async def counted() -> Message:
            nonlocal received, refused
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:  # answer now, and tell the app the client left: the rest is never read
                    if not answered and not refused:
                        refused = True
                        await _refuse(send, limit)
                    return {"type": "http.disconnect"}
            return message

        async def guarded(message: Message) -> None:
            nonlocal answered
            if refused:
                return  # the 413 went out already
            answered = answered or message["type"] == "http.response.start"
            await send(message)

        with contextlib.suppress(ClientDisconnect):
            await self.app(scope, counted, guarded)


async def _refuse(send: Send, limit: int) -> None:
    body = json.dumps(
        {"detail": f"The request body is larger than {limit} bytes; nothing was read or stored."}
    ).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})  # fmt: skip
    await send({"type": "http.response.body", "body": body})
