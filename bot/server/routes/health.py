"""Liveness, readiness, the chat widget's script and the demo page."""
from __future__ import annotations

import hashlib
from functools import cache
from importlib import resources

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

router = APIRouter()


@router.get("/healthz")
def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz")
def readyz(request: Request) -> JSONResponse:
    state = request.app.state
    if state.bridge.failure:
        return JSONResponse({"status": "error", "detail": state.bridge.failure}, status_code=503)
    if state.adapters.synced:
        return JSONResponse({"status": "ready", "adapter_version": state.adapters.active_version})
    return JSONResponse({"status": "loading"}, status_code=503)


@router.get("/metrics")
def metrics(request: Request) -> Response:
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE_LATEST)


@cache
def _widget() -> tuple[bytes, str]:
    body = resources.files("widget").joinpath("widget.js").read_bytes()
    return body, '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


@router.get("/widget.js")
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
