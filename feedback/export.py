"""Exports of the store to TRL dataset formats.

SFT is *conversational prompt/completion*: the prompt is the conversation up to the corrected turn
(system prompt included, as the bot saw it), the completion the approved correction."""
from __future__ import annotations

import hashlib
import json

from sqlmodel import Session, select

from feedback.models import Conversation, Correction, CorrectionStatus, Message
from feedback.repo import list_messages


def _prompt_before(session: Session, message: Message) -> list[dict]:
    conversation = session.get(Conversation, message.conversation_id)
    prompt = [{"role": "system", "content": conversation.system_prompt}] if conversation.system_prompt else []
    earlier = [m for m in list_messages(session, conversation_id=message.conversation_id) if m.seq < message.seq]
    return prompt + [{"role": m.role.value, "content": m.text} for m in earlier]


def _latest_approved(session: Session) -> list[Correction]:
    """The newest approved correction of each message, oldest message first."""
    query = (select(Correction).where(Correction.status == CorrectionStatus.approved)
             .order_by(Correction.updated_at, Correction.id))
    latest: dict[str, Correction] = {}
    for correction in session.exec(query):
        latest[correction.message_id] = correction
    return list(latest.values())


def sft_records(session: Session) -> list[dict]:
    """One record per corrected answer: {"prompt": [...messages], "completion": [assistant message]}."""
    records = []
    for correction in _latest_approved(session):
        message = session.get(Message, correction.message_id)
        records.append({"prompt": _prompt_before(session, message),
                        "completion": [{"role": "assistant", "content": correction.text}]})
    return records


def dataset_hash(records: list[dict]) -> str:
    payload = "\n".join(json.dumps(r, sort_keys=True, ensure_ascii=False) for r in records)
    return "sha256:" + hashlib.sha256(payload.encode("utf-8")).hexdigest()


def write_jsonl(records: list[dict], path) -> None:
    with open(path, "w", encoding="utf-8") as out:
        for record in records:
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
