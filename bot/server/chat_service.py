"""The chat service shared by the WebSocket and REST routes: validate, record, generate, record."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, replace
from datetime import datetime

from bot.runtime.interface import (
    AdapterManager,
    Busy,
    GenerationBridge,
    GenerationRequest,
    GenerationResult,
    ModelUnavailable,
    Retriever,
)
from bot.server.batching import Batched
from bot.server.grounding import Grounding, Policy, ground
from bot.server.limits import ClientLimits, LimitExceeded
from bot.server.live import LiveBus, conversation_topic
from bot.server.metrics import Metrics
from bot.server.settings import Settings
from feedback import handoffs, repo
from feedback.db import Store
from feedback.models import HandoffStatus, Role

log = logging.getLogger(__name__)
UNAVAILABLE = "The assistant is unavailable right now; the team has been alerted. Please try again later."


class ChatError(Exception):
    """A client-facing refusal: a stable `code`, a human `message` and the HTTP status."""

    def __init__(self, code: str, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


@dataclass(frozen=True)
class Reply:
    session_id: str
    message_id: str
    text: str
    adapter_version: str
    prompt_tokens: int
    completion_tokens: int
    ttft_ms: float
    total_ms: float
    finish_reason: str = "stop"
    sources: tuple[dict[str, str], ...] = ()  # the passages that grounded the answer: title, url, kind
    session_token: str | None = None  # the OpenAI API's: the new session's secret (votes need it)


@dataclass(frozen=True)
class Opened:
    session_id: str
    token: str | None  # a new session's secret, given to its customer this once (None: resumed)


@dataclass(frozen=True)
class Forwarded:
    """The message went to the person handling the conversation: the bot does not answer it."""

    session_id: str
    message_id: str
    agent: str


@dataclass(frozen=True)
class _Recorded:
    messages: list[dict]  # the conversation so far, as chat messages
    message_id: str
    session_started: datetime
    agent: str | None  # who has the conversation, when a person does


async def _quoted(text: str, version: str) -> AsyncIterator[str | GenerationResult]:
    """A reply that needs no model (a quoted answer), as deltas word by word and then the result."""
    for piece in re.findall(r"\s*\S+", text):
        yield piece
    yield GenerationResult(text, version, 0, 0)


class ChatService:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        bridge: GenerationBridge,
        adapters: AdapterManager,
        metrics: Metrics,
        limits: ClientLimits,
        retriever: Retriever | None = None,
        live: LiveBus | None = None,
    ) -> None:
        self.settings, self.store, self.bridge, self.adapters = settings, store, bridge, adapters
        self.metrics, self.limits, self.live = metrics, limits, live or LiveBus()
        self.policy = Policy(settings.quote_min_score, settings.no_answer_text)
        self._retrieve = Batched(retriever.retrieve_many) if retriever is not None else None

    async def _ground(self, messages: list[dict], retrieving: asyncio.Future[Grounding] | None = None) -> Grounding:
        """Grounding for the last customer turn (`retrieving` when it was started already); that turn, in
        `messages`, becomes the prompt the model will see."""
        if not messages or messages[-1]["role"] != "user":
            if retrieving is not None:
                retrieving.cancel()
            return Grounding()
        grounding = await (retrieving or self._grounding(messages[-1]["content"]))
        if grounding.prompt is not None:
            messages[-1] = {"role": "user", "content": grounding.prompt}
        return grounding

    async def _grounding(self, question: str) -> Grounding:
        """Retrieve for `question` (off the event loop) and decide what to do with what was found."""
        if self._retrieve is None:
            return Grounding()
        started = time.perf_counter()
        try:
            retrieval = await self._retrieve(question)
        except Exception:  # the answer goes on without grounding rather than failing
            log.exception("retrieval failed; answering without the knowledge base and the memory")
            self.metrics.retrieval.labels("failed").observe(time.perf_counter() - started)
            return Grounding()
        grounding = ground(question, retrieval, self.policy)
        self.metrics.retrieval.labels(grounding.outcome).observe(time.perf_counter() - started)
        return grounding

    def _stream(self, request: GenerationRequest, grounding: Grounding) -> AsyncIterator[str | GenerationResult]:
        """The model's answer, or, when grounding decided the reply, that text streamed the same way."""
        if grounding.answer is None:
            return self.bridge.stream(request)
        return _quoted(grounding.answer, request.adapter_version)

    def _refuse(self, api: str, code: str, message: str, status: int = 422) -> ChatError:
        self.metrics.refused(api, code)
        return ChatError(code, message, status)

    def check_text(self, text: str, api: str = "chat") -> str:
        text = text.strip()
        if not text:
            raise self._refuse(api, "empty_message", "The message is empty.")
        limit = self.settings.max_message_chars
        if len(text) > limit:
            raise self._refuse(
                api, "message_too_long", f"The message has {len(text)} characters; the limit is {limit}."
            )
        return text

    def admit(self, client: str, api: str) -> None:
        """Refuse when the model is not loaded yet or `client` is over its message rate."""
        if self.bridge.failure:
            raise self._refuse(api, "model_unavailable", UNAVAILABLE, 503)
        if not self.adapters.synced:
            raise self._refuse(api, "model_loading", "The model is still loading; try again in a moment.", 503)
        try:
            self.limits.hit(client)
        except LimitExceeded as exc:
            raise self._refuse(api, exc.code, exc.message, 429) from exc

    def _open(self, session_id: str | None, token: str | None) -> Opened:
        with self.store.session() as session:
            conversation, new_token = repo.open_conversation(
                session, conversation_id=session_id, token=token, system_prompt=self.settings.system_prompt
            )
        return Opened(conversation.id, new_token)

    async def open_session(self, session_id: str | None, token: str | None) -> Opened:
        """The session to resume when `token` is its secret, or a new one (with its secret) when
        `session_id` is absent, unknown or not the token's: ids are made by the server, never adopted."""
        return await asyncio.to_thread(self._open, session_id, token)

    def _record_user(self, session_id: str, text: str) -> _Recorded:
        """Store the customer's message; with the conversation so far, and who has it if a person does."""
        with self.store.session() as session:
            conversation = repo.get_or_create_conversation(
                session, conversation_id=session_id, system_prompt=self.settings.system_prompt
            )
            message = repo.add_message(session, conversation_id=conversation.id, role=Role.user, text=text)
            history = repo.list_messages(session, conversation_id=conversation.id)
            state = handoffs.live_state(session, conversation_id=conversation.id)
        system = [{"role": "system", "content": conversation.system_prompt}] if conversation.system_prompt else []
        return _Recorded(
            system + [{"role": m.role.chat_role, "content": m.text} for m in history],
            message.id,
            conversation.created_at,
            state.agent if state is not None and state.status == HandoffStatus.taken else None,
        )

    def _forget(self, message_id: str) -> None:
        with self.store.session() as session:
            repo.delete_message(session, message_id=message_id)

    def _record_reply(self, session_id: str, result: GenerationResult, latency_ms: float, grounding: Grounding) -> str:
        with self.store.session() as session:
            return repo.add_message(
                session,
                conversation_id=session_id,
                role=Role.assistant,
                text=result.text,
                adapter_version=result.adapter_version,
                prompt_tokens=result.prompt_tokens,
                completion_tokens=result.completion_tokens,
                latency_ms=latency_ms,
                grounding=grounding.prompt,
                sources=grounding.rows(),
            ).id

    async def reply(
        self, session_id: str, text: str, *, client: str, api: str = "chat"
    ) -> AsyncIterator[str | Reply | Forwarded]:
        """Answer a customer message in a session. Yields text deltas, then the stored `Reply`; or, while a
        person has the conversation, `Forwarded` once the message is stored and sent on to them."""
        text = self.check_text(text, api)
        self.admit(client, api)
        started = time.perf_counter()
        retrieving = asyncio.ensure_future(self._grounding(text))  # while the message is stored
        try:
            recorded = await asyncio.to_thread(self._record_user, session_id, text)
        except BaseException:
            retrieving.cancel()
            raise
        if recorded.agent is not None:
            retrieving.cancel()
            event = {"type": "customer_message", "session_id": session_id, "message_id": recorded.message_id,
                     "text": text}  # fmt: skip
            await self.live.publish_async(conversation_topic(session_id), event)
            yield Forwarded(session_id, recorded.message_id, recorded.agent)
            return
        messages, user_message_id = recorded.messages, recorded.message_id
        grounding = await self._ground(messages, retrieving)
        request = GenerationRequest(
            messages,
            adapter_version=self.adapters.version_for(session_id, recorded.session_started),
            max_new_tokens=self.settings.max_new_tokens,
            temperature=self.settings.temperature,
        )
        answer = self._generate(session_id, user_message_id, request, started, api, grounding, client)
        async with aclosing(answer) as stream:
            async for item in stream:
                yield item

    async def complete(
        self,
        messages: list[dict],
        *,
        client: str,
        version: str,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        stop: tuple[str, ...],
    ) -> AsyncIterator[str | Reply]:
        """Answer a whole conversation given by the client (the OpenAI-style API). It is stored as a
        new session so that feedback can refer to the answer."""
        self.admit(client, "openai")
        started = time.perf_counter()
        session_id, token, user_message_id, context = await asyncio.to_thread(self._record_conversation, messages)
        grounding = await self._ground(context)
        request = GenerationRequest(
            context,
            adapter_version=version,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            stop=stop,
        )
        answer = self._generate(session_id, user_message_id, request, started, "openai", grounding, client)
        async with aclosing(answer) as stream:
            async for item in stream:
                yield replace(item, session_token=token) if isinstance(item, Reply) else item

    def _record_conversation(self, messages: list[dict]) -> tuple[str, str, str, list[dict]]:
        system = next((m["content"] for m in messages if m["role"] == "system"), self.settings.system_prompt)
        turns = [m for m in messages if m["role"] != "system"]
        with self.store.session() as session:
            conversation, token = repo.new_conversation(session, system_prompt=system)
            stored = [
                repo.add_message(session, conversation_id=conversation.id, role=Role(m["role"]), text=m["content"])
                for m in turns
            ]
        context = [{"role": "system", "content": system}] if system else []
        return conversation.id, token, stored[-1].id, context + turns

    async def _generate(
        self,
        session_id: str,
        user_message_id: str,
        request: GenerationRequest,
        started: float,
        api: str,
        grounding: Grounding,
        client: str,
    ) -> AsyncIterator[str | Reply]:
        first_at = None
        try:  # a slot of the batch first (the fair share), then the model
            async with self.limits.turn(client), aclosing(self._stream(request, grounding)) as stream:
                async for item in stream:
                    if isinstance(item, str):
                        first_at = first_at or time.perf_counter()
                        yield item
                        continue
                    done_at = time.perf_counter()
                    total_ms, ttft_ms = (done_at - started) * 1000, ((first_at or done_at) - started) * 1000
                    message_id = await asyncio.to_thread(self._record_reply, session_id, item, total_ms, grounding)
                    self.metrics.answered(
                        api, item.prompt_tokens, item.completion_tokens, ttft_ms / 1000, total_ms / 1000
                    )
                    yield Reply(
                        session_id,
                        message_id,
                        item.text,
                        item.adapter_version,
                        item.prompt_tokens,
                        item.completion_tokens,
                        round(ttft_ms, 1),
                        round(total_ms, 1),
                        item.finish_reason,
                        tuple(grounding.sources()),
                    )
        except Busy as exc:  # raised before any text, when the generation queue is full
            await asyncio.to_thread(self._forget, user_message_id)  # refused, so not kept
            raise self._refuse(
                api, "busy", f"The assistant is busy ({exc}); please retry in a few seconds.", 429
            ) from exc
        except ModelUnavailable as exc:  # the model's worker stopped; what was accepted stays stored
            log.error("answer to message %s failed: %s", user_message_id, exc)
            raise self._refuse(api, "model_unavailable", UNAVAILABLE, 503) from exc
