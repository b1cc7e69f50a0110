"""What any site loads: the chat widget's script (`/widget.js`) and the demo page (`/`) that embeds it."""

from __future__ import annotations

import hashlib
from functools import cache
from importlib import resources

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

router = APIRouter()


@cache
def _widget() -> tuple[bytes, str]:
    body = resources.files("widget").joinpath("widget.js").read_bytes()
    return body, '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


@router.get(
    "/widget.js",
    response_class=Response,
    responses={
        200: {"content": {"text/javascript": {"schema": {"type": "string"}}}, "description": "the widget's script"},
        304: {"description": "unchanged since the ETag the browser sent"},
    },
)
def widget(request: Request) -> Response:
    """The embeddable widget: cached for an hour by browsers and CDNs, revalidated by its ETag (CORS
    for the allowed origins comes from the app's middleware)."""
    body, etag = _widget()
    headers = {"ETag": etag, "Cache-Control": "public, max-age=3600, stale-while-revalidate=86400"}
    if etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type="text/javascript; charset=utf-8", headers=headers)


@router.get("/", response_class=HTMLResponse)
def index() -> str:
    """The demo page: a plain site embedding the widget the way a customer's site would."""
    return resources.files("widget").joinpath("index.html").read_text(encoding="utf-8")
