"""Correction memory: what staff approved, as (question, answer) pairs the server can retrieve at once,
before any training round. The question is the customer's turn that the corrected answer replied to;
only the newest approved correction of an answer counts; drafts and rejected ones never do."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func
from sqlmodel import Session, col, select

from feedback.models import Correction, CorrectionStatus, Message, Role


@dataclass(frozen=True)
class Memory:
    correction_id: int
    question: str
    answer: str


def approved_memories(session: Session) -> list[Memory]:
    """Every answer's newest approved correction with the customer turn before it, oldest first."""
    corrections = session.exec(
        select(Correction, Message)
        .join(Message, col(Message.id) == Correction.message_id)
        .where(Correction.status == CorrectionStatus.approved)
        .order_by(col(Correction.updated_at), col(Correction.id))
    ).all()
    newest: dict[str, tuple[Correction, Message]] = {}
    for correction, answer in corrections:
        newest[answer.id] = (correction, answer)
    turns = _customer_turns(session, {answer.conversation_id for _, answer in newest.values()})
    memories = []
    for correction, answer in newest.values():
        before = [text for seq, text in turns.get(answer.conversation_id, []) if seq < answer.seq]
        if before and before[-1] and correction.id is not None:
            memories.append(Memory(correction.id, before[-1], correction.text))
    return memories


def _customer_turns(session: Session, conversation_ids: set[str]) -> dict[str, list[tuple[int, str]]]:
    """The customer's messages of these conversations, (seq, text) in order: one query for all of them."""
    turns: dict[str, list[tuple[int, str]]] = {}
    if conversation_ids:
        query = (
            select(Message.conversation_id, Message.seq, Message.text)
            .where(col(Message.conversation_id).in_(list(conversation_ids)), Message.role == Role.user)
            .order_by(col(Message.conversation_id), col(Message.seq))
        )
        for conversation_id, seq, text in session.exec(query):
            turns.setdefault(conversation_id, []).append((seq, text))
    return turns


def memory_fingerprint(session: Session) -> tuple[int, datetime | None]:
    """Changes whenever a correction is approved, edited or rejected: (corrections, newest change)."""
    row = session.exec(select(func.count(col(Correction.id)), func.max(Correction.updated_at))).one()
    return int(row[0]), row[1]
