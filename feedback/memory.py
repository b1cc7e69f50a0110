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
    memories = []
    for correction, answer in newest.values():
        question = session.exec(
            select(Message.text)
            .where(Message.conversation_id == answer.conversation_id, col(Message.seq) < answer.seq)
            .where(Message.role == Role.user)
            .order_by(col(Message.seq).desc())
        ).first()
        if question and correction.id is not None:
            memories.append(Memory(correction.id, question, correction.text))
    return memories


def memory_fingerprint(session: Session) -> tuple[int, datetime | None]:
    """Changes whenever a correction is approved, edited or rejected: (corrections, newest change)."""
    row = session.exec(select(func.count(col(Correction.id)), func.max(Correction.updated_at))).one()
    return int(row[0]), row[1]
