"""Training exports of the store, in the formats TRL's trainers take (conversational form).

- SFT: {"prompt": [...], "completion": [assistant]} — the approved correction of an answer, or the
  bot's own answer when a customer thumbed it up and no correction was approved.
- DPO: {"prompt", "chosen": [correction], "rejected": [original answer]} per approved correction.
- KTO: {"prompt", "completion", "label"} — thumbed answers (up = True, down = False), plus approved
  corrections as desirable examples (the staff's answer is by definition what we want).

The prompt is the conversation up to the answer, system prompt included. An answer that was grounded
(retrieval put passages in the customer's turn: `message.grounding`) gives two records: one with the
customer's turn as the model saw it, marked `"grounded": true`, and one with the customer's words alone,
so that an adapter learns both to use the passages and the fact itself (retrieval can miss). Only the
newest approved correction of an answer counts. Every text is PII-scrubbed unless told otherwise.
`since` and `until` keep the records whose feedback or correction changed in [since, until).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeAlias

from sqlmodel import Session, col, select

from feedback.methods import METHODS
from feedback.models import Conversation, Correction, CorrectionStatus, Feedback, Message, Thumb
from feedback.pii import Scrubber
from feedback.repo import list_messages

FORMATS = METHODS

Record: TypeAlias = dict[str, Any]  # one line of an export
GROUNDED = "grounded"  # a record's key: its prompt holds the retrieved passages the model saw
Turn: TypeAlias = dict[str, Any]  # one chat message of a record: {"role": ..., "content": ...}


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

    def __init__(self, session: Session, scrub: Callable[[list[Turn]], list[Turn]]) -> None:
        self.session, self.scrub = session, scrub
        self.cache: dict[str, tuple[str, list[Message]]] = {}

    def variants(self, message: Message) -> list[Record]:
        """The prompt before `message` as `{"prompt": ...}`: as the model saw it (grounded, marked) first
        when it was grounded, then as the customer wrote it."""
        plain = self.before(message)
        if not message.grounding or not plain or plain[-1]["role"] != "user":
            return [{"prompt": plain}]
        grounded = self.before(message, message.grounding)
        return [{"prompt": grounded, GROUNDED: True}, {"prompt": plain}]

    def before(self, message: Message, last_turn: str | None = None) -> list[Turn]:
        if message.conversation_id not in self.cache:
            conversation = self.session.get(Conversation, message.conversation_id)
            assert conversation is not None  # the message's foreign key guarantees it
            self.cache[message.conversation_id] = (
                conversation.system_prompt,
                list_messages(self.session, conversation_id=conversation.id),
            )
        system, messages = self.cache[message.conversation_id]
        prompt = [{"role": "system", "content": system}] if system else []
        prompt += [{"role": m.role.chat_role, "content": m.text} for m in messages if m.seq < message.seq]
        if last_turn is not None:
            prompt[-1] = {"role": prompt[-1]["role"], "content": last_turn}
        return self.scrub(prompt)


def _latest_approved(session: Session) -> list[Correction]:
    """The newest approved correction of each message, oldest message first."""
    query = (
        select(Correction)
        .where(Correction.status == CorrectionStatus.approved)
        .order_by(col(Correction.updated_at), col(Correction.id))
    )
    latest: dict[str, Correction] = {}
    for correction in session.exec(query):
        latest.pop(correction.message_id, None)
        latest[correction.message_id] = correction
    return list(latest.values())


def _votes(session: Session) -> list[Feedback]:
    return list(session.exec(select(Feedback).order_by(col(Feedback.updated_at), col(Feedback.id))))


def _naive_if(when: datetime, bound: datetime) -> datetime:
    return bound.replace(tzinfo=None) if when.tzinfo is None and bound.tzinfo is not None else bound


def _within(when: datetime, since: datetime | None, until: datetime | None = None) -> bool:
    """`since` <= `when` < `until` (either bound optional)."""
    if since is not None and when < _naive_if(when, since):
        return False
    return until is None or when < _naive_if(when, until)


def _assistant(text: str) -> list[Turn]:
    return [{"role": "assistant", "content": text}]


def correction_records(
    session: Session, *, since: datetime | None = None, until: datetime | None = None, scrubber: Scrubber | None = None
) -> list[Record]:
    """SFT records of the newest approved correction of each answer, oldest first. A correction
    superseded by a newer one is gone even when the window only holds the older one."""
    scrub = scrubber or Scrubber()
    prompts, records = _Prompts(session, scrub.messages), []
    for correction in _latest_approved(session):
        if _within(correction.updated_at, since, until):
            message = session.get(Message, correction.message_id)
            assert message is not None  # the correction's foreign key guarantees it
            records += [{**v, "completion": _assistant(scrub(correction.text))} for v in prompts.variants(message)]
    return records


def thumbs_up_records(
    session: Session, *, since: datetime | None = None, until: datetime | None = None, scrubber: Scrubber | None = None
) -> list[Record]:
    """SFT records of the bot's answers that customers thumbed up and staff did not correct."""
    scrub = scrubber or Scrubber()
    prompts, records = _Prompts(session, scrub.messages), []
    corrected = {c.message_id for c in _latest_approved(session)}
    for vote in _votes(session):
        if vote.thumb == Thumb.up and vote.message_id not in corrected and _within(vote.updated_at, since, until):
            message = session.get(Message, vote.message_id)
            assert message is not None  # the vote's foreign key guarantees it
            if message.adapter_version is None:  # not the model's text (votes on those are refused too)
                continue
            records += [{**v, "completion": _assistant(scrub(message.text))} for v in prompts.variants(message)]
    return records


def sft_records(
    session: Session, *, since: datetime | None = None, until: datetime | None = None, scrubber: Scrubber | None = None
) -> list[Record]:
    return correction_records(session, since=since, until=until, scrubber=scrubber) + thumbs_up_records(
        session, since=since, until=until, scrubber=scrubber
    )


def dpo_records(
    session: Session, *, since: datetime | None = None, until: datetime | None = None, scrubber: Scrubber | None = None
) -> list[Record]:
    scrub = scrubber or Scrubber()
    prompts, records = _Prompts(session, scrub.messages), []
    for correction in _latest_approved(session):
        message = session.get(Message, correction.message_id)
        assert message is not None  # the correction's foreign key guarantees it
        if correction.text.strip() != message.text.strip() and _within(correction.updated_at, since, until):
            chosen, rejected = _assistant(scrub(correction.text)), _assistant(scrub(message.text))
            records += [{**v, "chosen": chosen, "rejected": rejected} for v in prompts.variants(message)]
    return records


def kto_records(
    session: Session, *, since: datetime | None = None, until: datetime | None = None, scrubber: Scrubber | None = None
) -> list[Record]:
    scrub = scrubber or Scrubber()
    prompts, records = _Prompts(session, scrub.messages), []
    for vote in _votes(session):
        if _within(vote.updated_at, since, until):
            message = session.get(Message, vote.message_id)
            assert message is not None  # the vote's foreign key guarantees it
            completion, label = _assistant(scrub(message.text)), vote.thumb == Thumb.up
            records += [{**v, "completion": completion, "label": label} for v in prompts.variants(message)]
    for correction in _latest_approved(session):
        if _within(correction.updated_at, since, until):
            message = session.get(Message, correction.message_id)
            assert message is not None  # the correction's foreign key guarantees it
            completion = _assistant(scrub(correction.text))
            records += [{**v, "completion": completion, "label": True} for v in prompts.variants(message)]
    return records


RECORDS = {"sft": sft_records, "dpo": dpo_records, "kto": kto_records}


def records(
    session: Session,
    fmt: str,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    scrubber: Scrubber | None = None,
) -> list[Record]:
    if fmt not in RECORDS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return RECORDS[fmt](session, since=since, until=until, scrubber=scrubber)


def _lines(rows: list[Record]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows).encode("utf-8")


def dataset_hash(rows: list[Record]) -> str:
    """The content hash of a dataset: the SHA-256 of its JSONL export."""
    return "sha256:" + hashlib.sha256(_lines(rows)).hexdigest()


def write_jsonl(rows: list[Record], path: Path | str, fmt: str = "sft") -> ExportReport:
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


def export(
    session: Session, fmt: str, path: Path | str, *, since: datetime | None = None, scrubber: Scrubber | None = None
) -> ExportReport:
    return write_jsonl(records(session, fmt, since=since, scrubber=scrubber), path, fmt)
