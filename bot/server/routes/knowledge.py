"""The admin API for the knowledge base (the console's Knowledge page; `supportloop kb` on the command line):
`GET /api/admin/knowledge` lists sources with document and passage counts; `POST` (multipart: `source`
and one or more `files`) reads every file first — one that is unreadable, binary, empty, oversized or of
an unsupported type is refused with 422 naming it, and nothing is added — then embeds and stores them;
`DELETE .../{source}` removes a source; `GET .../search?q=` shows the passages closest to a question and
what the bot would do with it. Admins only (agents get 403). Running servers use a change at once."""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path, PurePath
from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, HTTPException, Query, Request, UploadFile
from pydantic import BaseModel, Field

from bot.runtime.interface import Retriever, ingest
from bot.server.deps import AdminDep, SessionDep
from bot.server.grounding import ground
from feedback import repo
from feedback.knowledge import MAX_FILE_BYTES, Document, KnowledgeError, list_sources, parse_document, remove_source

router = APIRouter(prefix="/api/admin/knowledge")
MAX_FILES = 200
SourceName = Annotated[str, Form(min_length=1, max_length=200, pattern=r"^[^/\\]+$")]


class SourceOut(BaseModel):
    source: str
    documents: int
    passages: int
    updated_at: datetime


class Added(BaseModel):
    source: str
    added: int = Field(description="documents new to the source")
    replaced: int = Field(description="documents whose passages changed")
    unchanged: int = Field(description="documents already stored as they are (skipped)")
    passages: int = Field(description="passages embedded and stored")


class Removed(BaseModel):
    source: str
    documents: int


class SearchHit(BaseModel):
    title: str
    url: str
    text: str
    score: float
    quotable: bool = Field(description="answers one question: quoted word for word when similar enough")


class SearchOut(BaseModel):
    outcome: Literal["quote", "grounded", "no_answer", "unchanged"] = Field(
        description="what the bot would do with this question now (corrections included)"
    )
    hits: list[SearchHit]
    kb_min_score: float
    quote_min_score: float


@router.get("", response_model=list[SourceOut])
def sources(session: SessionDep, _admin: AdminDep) -> list[SourceOut]:
    return [SourceOut(source=s.source, documents=s.documents, passages=s.chunks, updated_at=s.updated_at)
            for s in list_sources(session)]  # fmt: skip


async def _read(upload: UploadFile) -> Document:
    name = PurePath(upload.filename or "").name
    if not name:
        raise KnowledgeError("an uploaded file has no name")
    data = await upload.read(MAX_FILE_BYTES + 1)
    return parse_document(data, Path(name), key=f"upload:{name}")


@router.post("", response_model=Added, status_code=201)
async def add(
    request: Request, source: SourceName, files: Annotated[list[UploadFile], File()], admin: AdminDep
) -> Added:
    if len(files) > MAX_FILES:
        raise HTTPException(422, f"{len(files)} files in one upload; the limit is {MAX_FILES}; nothing was added")
    try:
        documents = [await _read(upload) for upload in files]
    except KnowledgeError as exc:
        raise HTTPException(422, f"{exc}; nothing was added") from None
    state = request.app.state
    done = await asyncio.to_thread(ingest, state.store, state.embedder, source, documents)
    with state.store.session() as session:
        repo.audit_action(session, admin, "kb.add", source, files=[d.path for d in documents], **done.outcomes)
        session.commit()
    return Added(source=source, passages=done.passages, **done.outcomes)


@router.delete("/{source}", response_model=Removed)
def remove(source: str, session: SessionDep, admin: AdminDep) -> Removed:
    documents = remove_source(session, source=source)
    if not documents:
        raise HTTPException(404, f"There is no knowledge-base source named {source!r}.")
    repo.audit_action(session, admin, "kb.remove", source, documents=documents)
    session.commit()
    return Removed(source=source, documents=documents)


def _search(request: Request, question: str, k: int) -> SearchOut:
    state, settings = request.app.state, request.app.state.settings
    retriever = state.retriever or Retriever(state.store, state.embedder, kb=False, memory=False)
    hits, retrieval = retriever.explain(question, k)
    outcome = ground(question, retrieval, state.chat.policy).outcome
    return SearchOut(
        outcome=outcome,
        hits=[
            SearchHit(title=h.title, url=h.url, text=h.text, score=round(h.score, 4), quotable=bool(h.answer))
            for h in hits
        ],  # fmt: skip
        kb_min_score=settings.kb_min_score,
        quote_min_score=settings.quote_min_score,
    )


@router.get("/search", response_model=SearchOut)
async def search(
    request: Request,
    _admin: AdminDep,
    q: Annotated[str, Query(min_length=1, max_length=2000, description="a customer's question")],
    k: Annotated[int, Query(ge=1, le=20)] = 5,
) -> SearchOut:
    return await asyncio.to_thread(_search, request, q, k)
