"""SQLModel tables of the feedback store.

Schema families (Base / Create / table / Public) are kept where clients send or receive the shape;
internal tables are plain. Timestamps are UTC.
"""
from __future__ import annotations

import enum
from datetime import datetime, timezone

from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Role(str, enum.Enum):
    user = "user"
    assistant = "assistant"


class Thumb(str, enum.Enum):
    up = "up"
    down = "down"


class CorrectionStatus(str, enum.Enum):
    draft = "draft"
    approved = "approved"
    rejected = "rejected"


class StaffRole(str, enum.Enum):
    agent = "agent"
    admin = "admin"


class AdapterStatus(str, enum.Enum):
    candidate = "candidate"
    active = "active"
    rejected = "rejected"
    retired = "retired"


BASE_VERSION = "base"  # the version name of "no adapter": the bare base model


class Conversation(SQLModel, table=True):
    id: str = Field(primary_key=True, max_length=64)
    system_prompt: str = ""
    created_at: datetime = Field(default_factory=utcnow)


class Message(SQLModel, table=True):
    id: str = Field(primary_key=True, max_length=64)
    conversation_id: str = Field(foreign_key="conversation.id", index=True, max_length=64)
    seq: int = Field(description="position in the conversation, from 0")
    role: Role
    text: str
    adapter_version: str | None = Field(default=None, max_length=128, index=True)
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_ms: float | None = None
    created_at: datetime = Field(default_factory=utcnow)


class FeedbackBase(SQLModel):
    thumb: Thumb
    reason: str | None = Field(default=None, max_length=32)
    comment: str | None = Field(default=None, max_length=2000)


class Feedback(FeedbackBase, table=True):
    id: int | None = Field(default=None, primary_key=True)
    message_id: str = Field(foreign_key="message.id", index=True, max_length=64)
    created_at: datetime = Field(default_factory=utcnow)


class Correction(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    message_id: str = Field(foreign_key="message.id", index=True, max_length=64)
    text: str
    staff_id: int = Field(foreign_key="staff.id")
    status: CorrectionStatus = CorrectionStatus.draft
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class Staff(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True, max_length=128)
    role: StaffRole = StaffRole.agent
    token_hash: str = Field(unique=True, max_length=128)
    disabled: bool = False
    created_at: datetime = Field(default_factory=utcnow)


class Adapter(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    version: str = Field(unique=True, max_length=128)
    path: str
    parent: str | None = Field(default=None, max_length=128)
    base_model: str
    dataset_hash: str | None = Field(default=None, max_length=128)
    metrics_json: str = "{}"
    status: AdapterStatus = AdapterStatus.candidate
    created_at: datetime = Field(default_factory=utcnow)
    activated_at: datetime | None = None


class TrainingRun(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    config_json: str = "{}"
    started_at: datetime = Field(default_factory=utcnow)
    finished_at: datetime | None = None
    outcome: str = Field(default="running", max_length=32)
    adapter_version: str | None = Field(default=None, max_length=128)
    log: str = ""
