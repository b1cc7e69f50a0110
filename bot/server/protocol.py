"""The chat protocol (v2; v1 clients still served): WebSocket frames and REST bodies as pydantic models. `docs/protocol.md`
documents it and the widget mirrors it; change both together."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from feedback.models import Reason, SourceKind, Thumb

PROTOCOL_VERSION = 2  # 2: live human handoff (agent_* frames, handoff, received, typing)
SUPPORTED_PROTOCOLS = (1, 2)
MAX_SESSION_TOKEN = 128  # characters of a session secret a client may send (ours are 43)


# client → server frames


class HelloFrame(BaseModel):
    type: Literal["hello"]
    protocol: int = PROTOCOL_VERSION
    session_id: str | None = Field(None, max_length=64)
    session_token: str | None = Field(
        None, max_length=MAX_SESSION_TOKEN, description="the session's secret: needed to resume it"
    )


class UserMessageFrame(BaseModel):
    type: Literal["user_message"]
    text: str


class CancelFrame(BaseModel):
    type: Literal["cancel"]


class TypingFrame(BaseModel):
    """The customer is typing (v2): shown to the agent who has the conversation."""

    type: Literal["typing"]


ClientFrame = TypeAdapter(
    Annotated[HelloFrame | UserMessageFrame | CancelFrame | TypingFrame, Field(discriminator="type")]
)


# server → client frames


class SessionFrame(BaseModel):
    type: Literal["session"] = "session"
    session_id: str
    protocol: int = PROTOCOL_VERSION
    resumed: bool = False
    session_token: str | None = None  # a new session's secret, sent this once: keep it with the id


class TokenFrame(BaseModel):
    type: Literal["token"] = "token"
    text: str


class Source(BaseModel):
    """A passage that grounded an answer, as shown under it: a knowledge-base page or a staff answer."""

    model_config = ConfigDict(from_attributes=True)

    title: str
    url: str = ""  # empty when the page has no web address
    kind: SourceKind


class DoneFrame(BaseModel):
    type: Literal["done"] = "done"
    message_id: str
    adapter_version: str
    prompt_tokens: int
    completion_tokens: int
    ttft_ms: float
    total_ms: float
    sources: list[Source] = []


class ReceivedFrame(BaseModel):
    """v2: the message is stored and went to the person handling the conversation (no bot answer)."""

    type: Literal["received"] = "received"
    message_id: str


class HandoffFrame(BaseModel):
    """v2: the conversation's handoff, when it changes and on (re)connecting: waiting for a person
    (`position` in the queue when known; `available` false with a `message` when nobody can come now)
    or taken by `agent`."""

    type: Literal["handoff"] = "handoff"
    status: Literal["waiting", "taken"]
    agent: str | None = None
    position: int | None = None
    available: bool = True  # false: nobody can take it now (outside opening hours, or no one online)
    message: str | None = None  # then: why, for the customer


class AgentJoinedFrame(BaseModel):
    type: Literal["agent_joined"] = "agent_joined"
    name: str


class AgentMessageFrame(BaseModel):
    type: Literal["agent_message"] = "agent_message"
    message_id: str
    text: str
    name: str


class AgentTypingFrame(BaseModel):
    type: Literal["agent_typing"] = "agent_typing"
    name: str


class AgentLeftFrame(BaseModel):
    """The person left: `handed_back` (the assistant answers again) or `closed`."""

    type: Literal["agent_left"] = "agent_left"
    name: str
    reason: Literal["handed_back", "closed"]


class ErrorFrame(BaseModel):
    type: Literal["error"] = "error"
    code: str
    message: str


# REST bodies


class ChatRequest(BaseModel):
    session_id: str | None = Field(None, max_length=64)
    message: str


class ChatResponse(BaseModel):
    session_id: str
    session_token: str | None = Field(
        None,
        description="set when a new session was started: its secret, given this once; send it in X-Session-Token "
        "to continue the session, read it, vote or ask for a person",
    )
    message_id: str
    reply: str
    adapter_version: str
    sources: list[Source] = []
    agent: str | None = Field(
        None,
        description="set when a person is handling the conversation: the message went to them and `reply` is "
        "empty; their answers appear in the transcript",
    )


class FeedbackState(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    thumb: Thumb
    reason: Reason | None
    comment: str | None


class TranscriptMessage(BaseModel):
    id: str
    role: str
    text: str
    adapter_version: str | None
    created_at: datetime
    feedback: FeedbackState | None = None
    sources: list[Source] = []
    author: str | None = Field(None, description="an agent message's: the person's name")


class Transcript(BaseModel):
    session_id: str
    created_at: datetime
    messages: list[TranscriptMessage]


class FeedbackRequest(BaseModel):
    thumb: Thumb
    reason: Reason | None = None
    comment: str | None = Field(None, max_length=2000)


class FeedbackResponse(FeedbackState):
    message_id: str


class HandoffRequest(BaseModel):
    note: str | None = Field(None, max_length=2000)


class HandoffResponse(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    session_id: str = Field(validation_alias="conversation_id")
    message_id: str | None
    note: str | None
    status: str
    created_at: datetime
    position: int | None = Field(None, description="while waiting: 1 = next to be taken")
    available: bool = Field(True, description="whether someone can take it now (opening hours, staff online)")
    message: str | None = Field(None, description="when nobody is available: why, for the customer")
