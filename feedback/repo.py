"""Keyword-only repository functions over a `Session`. Each commits what it writes."""
from __future__ import annotations

import json
import uuid

from sqlmodel import Session, func, select

from feedback.models import (
    Adapter, AdapterStatus, Conversation, Correction, CorrectionStatus, Feedback, Message, Role,
    Staff, StaffRole, Thumb, TrainingRun, utcnow,
)
from feedback.tokens import hash_token, new_token


class NotFound(LookupError):
    """A row the caller named does not exist."""


def new_id() -> str:
    return uuid.uuid4().hex


# conversations and messages -------------------------------------------------------------------

def get_or_create_conversation(session: Session, *, conversation_id: str | None,
                               system_prompt: str) -> Conversation:
    """The conversation `conversation_id`, or a new one (also when that id is unknown)."""
    if conversation_id:
        found = session.get(Conversation, conversation_id)
        if found is not None:
            return found
    conversation = Conversation(id=new_id(), system_prompt=system_prompt)
    session.add(conversation)
    session.commit()
    return conversation


def list_messages(session: Session, *, conversation_id: str) -> list[Message]:
    query = select(Message).where(Message.conversation_id == conversation_id).order_by(Message.seq)
    return list(session.exec(query))


def add_message(session: Session, *, conversation_id: str, role: Role, text: str,
                adapter_version: str | None = None, prompt_tokens: int | None = None,
                completion_tokens: int | None = None, latency_ms: float | None = None) -> Message:
    seq = session.exec(select(func.count()).select_from(Message)
                       .where(Message.conversation_id == conversation_id)).one()
    message = Message(id=new_id(), conversation_id=conversation_id, seq=seq, role=role, text=text,
                      adapter_version=adapter_version, prompt_tokens=prompt_tokens,
                      completion_tokens=completion_tokens, latency_ms=latency_ms)
    session.add(message)
    session.commit()
    return message


def get_conversation(session: Session, *, conversation_id: str) -> Conversation:
    conversation = session.get(Conversation, conversation_id)
    if conversation is None:
        raise NotFound(f"no session with id {conversation_id!r}")
    return conversation


def feedback_by_message(session: Session, *, conversation_id: str) -> dict[str, Feedback]:
    query = (select(Feedback).join(Message, Message.id == Feedback.message_id)
             .where(Message.conversation_id == conversation_id))
    return {vote.message_id: vote for vote in session.exec(query)}


def delete_message(session: Session, *, message_id: str) -> None:
    """Remove a message that was never answered (its request was refused before generation)."""
    message = session.get(Message, message_id)
    if message is not None:
        session.delete(message)
        session.commit()


def get_message(session: Session, *, message_id: str) -> Message:
    message = session.get(Message, message_id)
    if message is None:
        raise NotFound(f"no message with id {message_id!r}")
    return message


# feedback and corrections ---------------------------------------------------------------------

def set_feedback(session: Session, *, message_id: str, thumb: Thumb, reason: str | None = None,
                 comment: str | None = None) -> Feedback:
    """Record a vote on a message; a later vote on the same message replaces the earlier one."""
    get_message(session, message_id=message_id)
    vote = session.exec(select(Feedback).where(Feedback.message_id == message_id)).first()
    if vote is None:
        vote = Feedback(message_id=message_id, thumb=thumb)
    vote.thumb, vote.reason, vote.comment, vote.created_at = thumb, reason, comment, utcnow()
    session.add(vote)
    session.commit()
    return vote


def add_correction(session: Session, *, message_id: str, staff_id: int, text: str,
                   approve: bool) -> Correction:
    message = get_message(session, message_id=message_id)
    if message.role != Role.assistant:
        raise ValueError("only assistant answers can be corrected")
    status = CorrectionStatus.approved if approve else CorrectionStatus.draft
    correction = Correction(message_id=message_id, staff_id=staff_id, text=text, status=status)
    session.add(correction)
    session.commit()
    return correction


# staff ----------------------------------------------------------------------------------------

def create_staff(session: Session, *, name: str, role: StaffRole = StaffRole.agent) -> tuple[Staff, str]:
    """A new staff account and its bearer token; only the token's hash is stored."""
    if session.exec(select(Staff).where(Staff.name == name)).first() is not None:
        raise ValueError(f"a staff member named {name!r} already exists")
    token = new_token()
    staff = Staff(name=name, role=role, token_hash=hash_token(token))
    session.add(staff)
    session.commit()
    return staff, token


def staff_by_token(session: Session, *, token: str) -> Staff | None:
    staff = session.exec(select(Staff).where(Staff.token_hash == hash_token(token))).first()
    return None if staff is None or staff.disabled else staff


# adapters and training runs -------------------------------------------------------------------

def active_adapter(session: Session) -> Adapter | None:
    return session.exec(select(Adapter).where(Adapter.status == AdapterStatus.active)).first()


def next_adapter_number(session: Session) -> int:
    return session.exec(select(func.count()).select_from(Adapter)).one() + 1


def register_adapter(session: Session, *, version: str, path: str, base_model: str,
                     parent: str | None, dataset_hash: str | None, metrics: dict,
                     activate: bool) -> Adapter:
    """Insert an adapter row; with `activate`, it becomes the one active version in one commit."""
    adapter = Adapter(version=version, path=path, parent=parent, base_model=base_model,
                      dataset_hash=dataset_hash, metrics_json=json.dumps(metrics))
    if activate:
        for old in session.exec(select(Adapter).where(Adapter.status == AdapterStatus.active)):
            old.status = AdapterStatus.retired
            session.add(old)
        adapter.status, adapter.activated_at = AdapterStatus.active, utcnow()
    session.add(adapter)
    session.commit()
    return adapter


def start_run(session: Session, *, config: dict) -> TrainingRun:
    run = TrainingRun(config_json=json.dumps(config, default=str))
    session.add(run)
    session.commit()
    return run


def finish_run(session: Session, *, run_id: int, outcome: str, log: str,
               adapter_version: str | None = None) -> TrainingRun:
    run = session.get(TrainingRun, run_id)
    if run is None:
        raise NotFound(f"no training run {run_id}")
    run.outcome, run.log, run.adapter_version, run.finished_at = outcome, log, adapter_version, utcnow()
    session.add(run)
    session.commit()
    return run
