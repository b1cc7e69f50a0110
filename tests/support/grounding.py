"""Store helpers for the grounding tests: a knowledge-base page and answered questions with corrections."""

from __future__ import annotations

from pathlib import Path

from bot.runtime.embeddings import embed_passages
from feedback import repo
from feedback.knowledge import read_document, store_document
from feedback.models import Role, StaffRole


def add_page(store, embedder, folder: Path, name: str, markdown: str, url: str = "") -> None:
    """A Markdown page in the knowledge base, embedded with `embedder` (as `supportloop kb add` does)."""
    path = folder / name
    path.write_text(markdown)
    document = read_document(path, url)
    with store.session() as s:
        store_document(s, source="help", document=document, embedding_model=embedder.identity,
                       embeddings=embed_passages(embedder, document.passages))  # fmt: skip


def answered(store, question: str, answer: str = "I am not sure.") -> str:
    """A conversation where the bot answered `question`; the answer's message id."""
    with store.session() as s:
        conversation = repo.get_or_create_conversation(s, conversation_id=None, system_prompt="")
        repo.add_message(s, conversation_id=conversation.id, role=Role.user, text=question)
        return repo.add_message(s, conversation_id=conversation.id, role=Role.assistant, text=answer).id


def correct(store, message_id: str, text: str, *, approve: bool = True, reject: bool = False) -> int:
    with store.session() as s:
        staff = (
            repo.list_staff(s)[0] if repo.list_staff(s) else repo.create_staff(s, name="ada", role=StaffRole.admin)[0]
        )
        correction = repo.add_correction(
            s, message_id=message_id, actor=staff, text=text, approve=approve, reject=reject
        )
        assert correction.id is not None
        return correction.id
