"""The app factory. The lifespan owns the store, the generation bridge and the adapter watcher; tests inject a
fake generator or a store through `create_app` instead of patching."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler, request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from bot.runtime.interface import (
    AdapterManager,
    Embedder,
    GenerationBridge,
    Generator,
    LazyEmbedder,
    Retriever,
    build_generator,
    build_vllm_generator,
    load_embedder,
    resolve_base_model,
)
from bot.server.body_limit import BodyLimit
from bot.server.chat_service import ChatService
from bot.server.deps import SESSION_TOKEN_HEADER
from bot.server.errors import HANDLED, error_reply
from bot.server.limits import ClientLimits, FairShare
from bot.server.live import LiveBus
from bot.server.metrics import Metrics
from bot.server.round_launcher import round_launcher
from bot.server.routes import (
    chat,
    console,
    handoffs,
    health,
    knowledge,
    openai_api,
    rounds,
    staff,
    versions,
    votes,
    widget,
)
from bot.server.schema import document_refusals
from bot.server.settings import Settings
from feedback.db import Store, open_store
from feedback.ingest import VoteWriter

log = logging.getLogger(__name__)


async def _start(app: FastAPI) -> None:
    """Load the model, then keep the active adapter in sync; ready once the first sync is done."""
    try:
        await app.state.bridge.load()
    except Exception:
        log.exception("model failed to load")
        return
    if app.state.retriever is not None:  # load the embedder now (even with nothing to search yet), not
        await asyncio.to_thread(app.state.retriever.warm)  # during the first customers' questions
    await app.state.adapters.run()


def make_retriever(settings: Settings, store: Store, embedder: Embedder | LazyEmbedder) -> Retriever | None:
    """Retrieval for grounded answers, unless both the knowledge base and the memory are off."""
    if not (settings.kb or settings.memory):
        return None
    return Retriever(
        store,
        embedder,
        kb=settings.kb,
        memory=settings.memory,
        top_k=settings.retrieval_top_k,
        kb_min_score=settings.kb_min_score,
        memory_min_score=settings.memory_min_score,
        max_chars=settings.grounding_max_chars,
        match_names=settings.match_names,
        vector_search=settings.vector_search,
    )


def _lifespan(settings: Settings, generator: Generator, store: Store | None, embedder: Embedder | LazyEmbedder | None):
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        own_store = store is None
        state = app.state
        state.store = store or open_store(settings.db_url)
        state.votes = VoteWriter(state.store)
        state.bridge = GenerationBridge(generator)
        state.adapters = AdapterManager(
            state.bridge,
            state.store,
            settings.adapters_dir,
            settings.adapter_poll_seconds,
            settings.max_loaded_adapters,
            on_swap=lambda _v, seconds: state.metrics.swapped(seconds),
            on_canary_rollback=lambda: state.metrics.canary_rollbacks.inc(),
        )
        state.metrics = Metrics(generator.stats, lambda: state.adapters.active_version)
        share = FairShare(settings.max_batch, settings.max_queue, settings.fair_share)
        state.limits = ClientLimits(settings.rate_limit, settings.max_sessions_per_client, share)
        threads = 1 if settings.model_process else None  # the model decodes on the other cores
        state.embedder = embedder or load_embedder(settings.embedding_model, threads)  # loaded at its first use
        state.retriever = make_retriever(settings, state.store, state.embedder)
        state.live = LiveBus(state.store)
        await state.live.start()
        state.chat = ChatService(
            settings, state.store, state.bridge, state.adapters, state.metrics, state.limits, state.retriever,
            state.live,
        )  # fmt: skip
        task = asyncio.create_task(_start(app))
        try:
            yield
        finally:
            await state.live.stop()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            state.bridge.close()
            await state.votes.close()
            if own_store:
                state.store.dispose()

    return lifespan


def _openai_shaped(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    """A refusal under /v1 in OpenAI's error shape, as OpenAI's clients read it."""
    response = openai_api.OpenAIError(status, message, "invalid_request" if status < 500 else "unavailable").response()
    response.headers.update(headers or {})
    return response


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(openai_api.OpenAIError)
    async def openai_error(_request: Request, exc: openai_api.OpenAIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        if not request.url.path.startswith("/v1/"):
            return await request_validation_exception_handler(request, exc)
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        return openai_api.OpenAIError(
            400, f"Invalid request: {param or 'body'}: {first.get('msg')}.", "invalid_request", param
        ).response()

    @app.exception_handler(StarletteHTTPException)
    async def refused(request: Request, exc: StarletteHTTPException) -> Response:
        if not request.url.path.startswith("/v1/"):  # e.g. an unparsable body, under /v1 in OpenAI's shape
            return await http_exception_handler(request, exc)
        return _openai_shaped(exc.status_code, str(exc.detail), exc.headers)

    async def store_error(request: Request, exc: Exception) -> JSONResponse:
        status, body, headers = error_reply(exc)
        if request.url.path.startswith("/v1/"):
            return _openai_shaped(status, body["detail"], headers)
        return JSONResponse(body, status_code=status, headers=headers)

    for kind in HANDLED:
        app.add_exception_handler(kind, store_error)

    @app.exception_handler(Exception)
    async def unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error", exc_info=exc)
        return JSONResponse({"detail": "Internal error; it has been logged."}, status_code=500)


def create_app(
    settings: Settings | None = None,
    generator: Generator | None = None,
    store: Store | None = None,
    embedder: Embedder | LazyEmbedder | None = None,
) -> FastAPI:
    settings = settings or Settings()
    if generator is None and settings.backend == "vllm":
        generator = build_vllm_generator(
            settings.vllm_url, settings.vllm_model, settings.max_batch + settings.max_queue
        )
    if generator is None:
        path = resolve_base_model(settings.base_model, settings.model_cache)
        generator = build_generator(
            path,
            settings.device,
            model_process=settings.model_process,
            prefill_process=settings.prefill_process,
            max_batch=settings.max_batch,
            max_queue=settings.max_queue,
            threads=settings.threads,
        )
    app = FastAPI(title="supportloop", lifespan=_lifespan(settings, generator, store, embedder))
    app.state.settings = settings
    app.state.launch_round = round_launcher(settings)
    app.add_middleware(  # innermost: refusals still get the CORS headers the widget needs to read them
        BodyLimit, default=settings.max_body_bytes, limits={"/api/admin/knowledge": settings.max_upload_bytes}
    )
    app.add_middleware(votes.VoteIngest)  # inside CORS: the widget's cross-origin votes get CORS headers
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.allowed_origins,
        allow_methods=["GET", "POST", "PATCH"],
        allow_headers=["Authorization", "Content-Type", SESSION_TOKEN_HEADER],
    )
    for module in (health, widget, chat, votes, handoffs, staff, rounds, versions, knowledge, openai_api, console):
        app.include_router(module.router)
    app.mount("/staff/static", StaticFiles(packages=[("bot.server", "console/static")]), name="console-static")
    _install_error_handlers(app)
    document_refusals(app)
    return app
