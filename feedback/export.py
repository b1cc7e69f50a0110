"""Training exports of the store, in the formats TRL's trainers take (conversational form).

- SFT: {"prompt": [...], "completion": [assistant]} — the approved correction of an answer, or the
  bot's own answer when a customer thumbed it up and no correction was approved.
- DPO: {"prompt", "chosen": [correction], "rejected": [original answer]} per approved correction.
- KTO: {"prompt", "completion", "label"} — thumbed answers (up = True, down = False), plus approved
  corrections as desirable examples (the staff's answer is by definition what we want).

The prompt is the conversation up to the answer, system prompt included, as the bot saw it. Only the
newest approved correction of an answer counts. Every text is PII-scrubbed unless told otherwise.
`since` keeps the records whose feedback or correction changed at or after that time.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlmodel import Session, select

from feedback.models import Conversation, Correction, CorrectionStatus, Feedback, Message, Thumb
from feedback.pii import Scrubber
from feedback.repo import list_messages

FORMATS = ("sft", "dpo", "kto")


@dataclass(frozen=True)
class ExportReport:
    format: str
    records: int
    bytes: int
    sha256: str
    path: str | None = None

    def describe(self) -> str:
        where = f" to {self.path}" if self.path else ""
        return f"{self.format}: {self.records} records, {self.bytes} bytes, {self.sha256}{where}"


class _Prompts:
    """The conversation before each answer, loading each conversation once."""

    def __init__(self, session: Session, scrub: Callable[[list[dict]], list[dict]]) -> None:
        self.session, self.scrub, self.cache = session, scrub, {}

    def before(self, message: Message) -> list[dict]:
        if message.conversation_id not in self.cache:
            conversation = self.session.get(Conversation, message.conversation_id)
            self.cache[message.conversation_id] = (conversation.system_prompt,
                                                   list_messages(self.session, conversation_id=conversation.id))
        system, messages = self.cache[message.conversation_id]
        prompt = [{"role": "system", "content": system}] if system else []
        prompt += [{"role": m.role.value, "content": m.text} for m in messages if m.seq < message.seq]
        return self.scrub(prompt)


def _latest_approved(session: Session) -> list[Correction]:
    """The newest approved correction of each message, oldest message first."""
    query = (select(Correction).where(Correction.status == CorrectionStatus.approved)
             .order_by(Correction.updated_at, Correction.id))
    latest: dict[str, Correction] = {}
    for correction in session.exec(query):
        latest.pop(correction.message_id, None)
        latest[correction.message_id] = correction
    return list(latest.values())


def _votes(session: Session) -> list[Feedback]:
    return list(session.exec(select(Feedback).order_by(Feedback.updated_at, Feedback.id)))


def _after(when: datetime, since: datetime | None) -> bool:
    if since is None:
        return True
    if when.tzinfo is None and since.tzinfo is not None:
        since = since.replace(tzinfo=None)
    return when >= since


def _assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def sft_records(session: Session, *, since: datetime | None = None, scrubber: Scrubber | None = None) -> list[dict]:
    scrub = scrubber or Scrubber()
    prompts, records = _Prompts(session, scrub.messages), []
    corrections = _latest_approved(session)
    corrected = {c.message_id for c in corrections}
    for correction in corrections:
        if _after(correction.updated_at, since):
            message = session.get(Message, correction.message_id)
            records.append({"prompt": prompts.before(message), "completion": _assistant(scrub(correction.text))})
    for vote in _votes(session):
        if vote.thumb == Thumb.up and vote.message_id not in corrected and _after(vote.updated_at, since):
            message = session.get(Message, vote.message_id)
            records.append({"prompt": prompts.before(message), "completion": _assistant(scrub(message.text))})
    return records


def dpo_records(session: Session, *, since: datetime | None = None, scrubber: Scrubber | None = None) -> list[dict]:
    scrub = scrubber or Scrubber()
    prompts, records = _Prompts(session, scrub.messages), []
    for correction in _latest_approved(session):
        message = session.get(Message, correction.message_id)
        if correction.text.strip() != message.text.strip() and _after(correction.updated_at, since):
            records.append({"prompt": prompts.before(message), "chosen": _assistant(scrub(correction.text)),
                            "rejected": _assistant(scrub(message.text))})
    return records


def kto_records(session: Session, *, since: datetime | None = None, scrubber: Scrubber | None = None) -> list[dict]:
    scrub = scrubber or Scrubber()
    prompts, records = _Prompts(session, scrub.messages), []
    for vote in _votes(session):
        if _after(vote.updated_at, since):
            message = session.get(Message, vote.message_id)
            records.append({"prompt": prompts.before(message), "completion": _assistant(scrub(message.text)),
                            "label": vote.thumb == Thumb.up})
    for correction in _latest_approved(session):
        if _after(correction.updated_at, since):
            message = session.get(Message, correction.message_id)
            records.append({"prompt": prompts.before(message), "completion": _assistant(scrub(correction.text)),
                            "label": True})
    return records


RECORDS = {"sft": sft_records, "dpo": dpo_records, "kto": kto_records}


def records(session: Session, fmt: str, *, since: datetime | None = None, scrubber: Scrubber | None = None) -> list[dict]:
    if fmt not in RECORDS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return RECORDS[fmt](session, since=since, scrubber=scrubber)


def _lines(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows).encode("utf-8")


def dataset_hash(rows: list[dict]) -> str:
    """The content hash of a dataset: the SHA-256 of its JSONL export."""
    return "sha256:" + hashlib.sha256(_lines(rows)).hexdigest()


def write_jsonl(rows: list[dict], path: Path | str, fmt: str = "sft") -> ExportReport:
    """Write `rows` as JSON lines (written to a temporary name, flushed, renamed) and report it."""
    data, path = _lines(rows), Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.partial")
    with open(staging, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(staging, path)
    return ExportReport(fmt, len(rows), len(data), "sha256:" + hashlib.sha256(data).hexdigest(), str(path))


def export(session: Session, fmt: str, path: Path | str, *, since: datetime | None = None,
           scrubber: Scrubber | None = None) -> ExportReport:
    return write_jsonl(records(session, fmt, since=since, scrubber=scrubber), path, fmt)
