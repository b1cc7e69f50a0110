"""SQLModel tables of the feedback store.

Schema families (Base / Create / table / Public) are kept where clients send or receive the shape;
internal tables are plain. Timestamps are UTC.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime

from sqlalchemy import UniqueConstraint
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(UTC)


class Role(str, enum.Enum):
    user = "user"
    assistant = "assistant"
    agent = "agent"  # a staff member who took the conversation over (live handoff)

    @property
    def chat_role(self) -> str:
        """The role in a model's chat template: a human agent's turns read as the assistant's."""
        return "assistant" if self is Role.agent else self.value


class Thumb(str, enum.Enum):
    up = "up"
    down = "down"


class Reason(str, enum.Enum):
    """Why a customer thumbed an answer down (a fixed set, so it can be counted and filtered)."""

    wrong = "wrong"
    unhelpful = "unhelpful"
    outdated = "outdated"
    unsafe = "unsafe"
    other = "other"


class HandoffStatus(str, enum.Enum):
    open = "open"  # waiting for an agent
    taken = "taken"  # an agent has the conversation: the bot does not answer it
    closed = "closed"  # handed back to the bot, or closed (`Handoff.outcome`)


class HandoffOutcome(str, enum.Enum):
    handed_back = "handed_back"  # the bot answers the conversation again
    closed = "closed"  # staff closed the conversation


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


class Conversation(SQLModel, table=True):
    id: str = Field(primary_key=True, max_length=64)
    system_prompt: str = ""
    token_hash: str | None = Field(
        default=None,
        max_length=64,
        description="SHA-256 of the session's secret, which its customer shows to read, vote or resume (None: "
        "no customer may: made before secrets existed, or by a tool)",
    )
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
    grounding: str | None = Field(
        default=None, description="an answer's: the retrieved passages its prompt carried (the template's block)"
    )
    staff_id: int | None = Field(default=None, foreign_key="staff.id", description="an agent message's author")
    created_at: datetime = Field(default_factory=utcnow)


class FeedbackBase(SQLModel):
    thumb: Thumb
    reason: Reason | None = None
    comment: str | None = Field(default=None, max_length=2000)


class Feedback(FeedbackBase, table=True):
    """A customer's vote on one answer: one per message (its session's), changeable."""

    id: int | None = Field(default=None, primary_key=True)
    message_id: str = Field(foreign_key="message.id", unique=True, max_length=64)
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow, index=True)


class Correction(SQLModel, table=True):
    """Staff's better answer for an assistant message; `revision` grows with every edit, so a stale
    edit (based on an older revision) is detected instead of overwriting someone else's work."""

    id: int | None = Field(default=None, primary_key=True)
    message_id: str = Field(foreign_key="message.id", index=True, max_length=64)
    text: str
    staff_id: int = Field(foreign_key="staff.id")
    status: CorrectionStatus = CorrectionStatus.draft
    revision: int = 1
    reviewed_by: int | None = Field(default=None, foreign_key="staff.id")
    reviewed_at: datetime | None = None
    origin: str = Field(
        default="staff", max_length=16, description="staff (written in review) or handoff (an agent's live reply)"
    )
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow, index=True)


class Handoff(SQLModel, table=True):
    """A customer asked to talk to a human: open (waiting) → taken (an agent chats live; one owner) →
    closed (handed back to the bot, or closed). `message_id` is the bot turn the customer rejected."""

    id: int | None = Field(default=None, primary_key=True)
    conversation_id: str = Field(foreign_key="conversation.id", index=True, max_length=64)
    message_id: str | None = Field(default=None, foreign_key="message.id", max_length=64, index=True)
    note: str | None = Field(default=None, max_length=2000)
    status: HandoffStatus = HandoffStatus.open
    created_at: datetime = Field(default_factory=utcnow)
    assigned_to: int | None = Field(default=None, foreign_key="staff.id")
    assigned_at: datetime | None = None
    outcome: HandoffOutcome | None = None
    contact_email: str | None = Field(
        default=None, max_length=254, description="left by the customer when nobody was available (PII: never exported)"
    )
    closed_by: int | None = Field(default=None, foreign_key="staff.id")
    closed_at: datetime | None = None


class Staff(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True, max_length=128)
    role: StaffRole = StaffRole.agent
    token_hash: str = Field(unique=True, max_length=128)
    disabled: bool = False
    created_at: datetime = Field(default_factory=utcnow)


class StaffLogin(SQLModel, table=True):
    """A staff console login: the browser holds a random cookie token (only its hash is stored here) and
    sends `csrf_token` back on every state-changing request. Ends at `expires_at` or on logout."""

    id: int | None = Field(default=None, primary_key=True)
    token_hash: str = Field(unique=True, max_length=128)
    staff_id: int = Field(foreign_key="staff.id", index=True)
    csrf_token: str = Field(max_length=128)
    created_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime = Field(index=True)


class StaffAction(SQLModel, table=True):
    """The audit trail: every state-changing staff action, with who and when."""

    id: int | None = Field(default=None, primary_key=True)
    staff_id: int = Field(foreign_key="staff.id", index=True)
    action: str = Field(max_length=64)
    target: str = Field(default="", max_length=128)
    detail_json: str = "{}"
    created_at: datetime = Field(default_factory=utcnow, index=True)


class Adapter(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    version: str = Field(unique=True, max_length=128)
    path: str
    parent: str | None = Field(default=None, max_length=128)
    base_model: str
    dataset_hash: str | None = Field(default=None, max_length=128)
    datasets_json: str = Field(default="{}", description="per method: content hash and size")
    metrics_json: str = "{}"
    status: AdapterStatus = AdapterStatus.candidate
    created_at: datetime = Field(default_factory=utcnow)
    activated_at: datetime | None = None


class AdapterActivation(SQLModel, table=True):
    """Every change of the active version (`base` = no adapter): a promotion, a rollback or a training
    round publishing its candidate; who did it, and whether a gate-rejected version was forced."""

    id: int | None = Field(default=None, primary_key=True)
    version: str = Field(max_length=128)
    previous: str = Field(max_length=128)
    action: str = Field(max_length=16, description="promote, rollback or publish")
    actor: str = Field(max_length=128, description="a staff name, 'cli' or 'training round'")
    staff_id: int | None = Field(default=None, foreign_key="staff.id")
    forced: bool = False
    created_at: datetime = Field(default_factory=utcnow, index=True)


class RunOutcome(str, enum.Enum):
    """Where a training run stands. `published`: the candidate passed the gate (and was activated unless
    told not to); `rejected`: the gate refused it (kept for inspection, never served); `skipped`:
    nothing to train or not needed; `abandoned`: its process died mid-round (cleaned up by the next)."""

    queued = "queued"
    running = "running"
    published = "published"
    rejected = "rejected"
    skipped = "skipped"
    failed = "failed"
    abandoned = "abandoned"


FINISHED = (RunOutcome.published, RunOutcome.rejected, RunOutcome.skipped, RunOutcome.failed, RunOutcome.abandoned)


class TrainingRun(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    config_json: str = "{}"
    started_at: datetime = Field(default_factory=utcnow)
    finished_at: datetime | None = None
    outcome: str = Field(default="running", max_length=32)
    adapter_version: str | None = Field(default=None, max_length=128)
    log: str = ""
    snapshot_at: datetime | None = Field(default=None, description="the store snapshot the round trained on")
    progress_json: str = Field(default="{}", description="phase, step and steps of a running round")


class TrainLock(SQLModel, table=True):
    """At most one row per lock name: the round holding it. A holder whose process is gone (same host)
    or whose heartbeat is stale is taken over by the next round."""

    name: str = Field(primary_key=True, max_length=32)
    run_id: int
    host: str = Field(max_length=255)
    pid: int
    acquired_at: datetime = Field(default_factory=utcnow)
    heartbeat_at: datetime = Field(default_factory=utcnow)


class Canary(SQLModel, table=True):
    """A candidate version served to `percent` % of the sessions started while it runs (chosen by a
    hash of the session id, so a session keeps its version). At most one runs (`ended_at` is None);
    `outcome` says how it ended: stopped, promoted, replaced or rolled back (automatically, with the
    vote counts and p-value in `detail_json`)."""

    id: int | None = Field(default=None, primary_key=True)
    version: str = Field(max_length=128)
    percent: float
    actor: str = Field(max_length=128)
    staff_id: int | None = Field(default=None, foreign_key="staff.id")
    forced: bool = False
    started_at: datetime = Field(default_factory=utcnow, index=True)
    ended_at: datetime | None = None
    outcome: str | None = Field(default=None, max_length=32)
    ended_by: str | None = Field(default=None, max_length=128)
    detail_json: str = "{}"


class SourceKind(str, enum.Enum):
    """Where a passage that grounded an answer came from."""

    kb = "kb"
    correction = "correction"


class KnowledgeDocument(SQLModel, table=True):
    """One ingested file of the knowledge base, under a named source (e.g. "help-centre")."""

    __table_args__ = (UniqueConstraint("source", "path", name="uq_knowledgedocument_source_path"),)
    id: int | None = Field(default=None, primary_key=True)
    source: str = Field(max_length=128, index=True)
    path: str = Field(max_length=1024, description="the file it was read from, unique within its source")
    url: str = Field(default="", max_length=1024, description="where customers can read it (cited); may be empty")
    title: str = Field(default="", max_length=512)
    content_hash: str = Field(
        max_length=80, description="sha256 of the file's bytes: re-adding it unchanged is a no-op"
    )
    embedding_model: str = Field(default="", max_length=256)
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow, index=True)


class KnowledgeChunk(SQLModel, table=True):
    """A passage of a document with its embedding (float32 bytes, normalised; torch-free)."""

    id: int | None = Field(default=None, primary_key=True)
    document_id: int = Field(foreign_key="knowledgedocument.id", index=True)
    seq: int
    title: str = Field(default="", max_length=512, description="the document's title and the section's heading")
    text: str
    embedding: bytes


class GroundingSource(SQLModel, table=True):
    """A passage that grounded an answer, as cited to the customer (title and URL kept as they were)."""

    id: int | None = Field(default=None, primary_key=True)
    message_id: str = Field(foreign_key="message.id", index=True, max_length=64)
    rank: int
    kind: SourceKind
    title: str = Field(default="", max_length=512)
    url: str = Field(default="", max_length=1024)
    score: float
    chunk_id: int | None = Field(default=None, description="a kb passage (no foreign key: the KB may change)")
    correction_id: int | None = Field(default=None, foreign_key="correction.id")
