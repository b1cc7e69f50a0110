"""Round configuration as documented dataclasses (TRL style: `field(metadata={"help": ...})`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from trainer.gate import GateSettings


@dataclass
class LoraSettings:
    r: int = field(default=16, metadata={"help": "LoRA rank."})
    alpha: int = field(default=32, metadata={"help": "LoRA alpha (scaling = alpha / r)."})
    dropout: float = field(default=0.0, metadata={"help": "LoRA dropout."})
    target_modules: str = field(
        default="all-linear", metadata={"help": "'all-linear' or comma-separated module names."}
    )


@dataclass
class SFTSettings:
    epochs: int = field(default=5, metadata={"help": "Passes over the round's examples."})
    min_steps: int = field(default=0, metadata={"help": "At least this many optimizer steps."})
    min_steps_per_epoch: int = field(
        default=4,
        metadata={"help": "Smaller batches when there are few examples, so each pass still makes this many updates."},
    )
    learning_rate: float = field(default=2e-3, metadata={"help": "Peak learning rate (LoRA tolerates high rates)."})
    batch_size: int = field(default=8, metadata={"help": "Examples per optimizer step (at most)."})
    anchors: int = field(
        default=16,
        metadata={
            "help": "The base model's own answers to this many everyday "
            "support questions, mixed in so the adapter leaves other "
            "answers alone (trainer/anchors.py); 0 turns it off."
        },
    )
    max_length: int = field(default=1024, metadata={"help": "Longest tokenized example; longer are cut."})
    seed: int = field(default=0, metadata={"help": "Seed for reproducible rounds."})


@dataclass
class PreferenceSettings:
    """DPO and KTO (TRL defaults where they fit a small adapter round)."""

    epochs: int = field(default=2, metadata={"help": "Passes over the round's examples."})
    min_steps: int = field(default=8, metadata={"help": "At least this many optimizer steps."})
    learning_rate: float = field(default=5e-5, metadata={"help": "Peak learning rate."})
    batch_size: int = field(default=4, metadata={"help": "Examples per optimizer step (KTO needs at least 2)."})
    beta: float = field(
        default=0.1,
        metadata={"help": "How far the adapter may move from the reference (the model without the adapter)."},
    )
    max_length: int = field(default=1024, metadata={"help": "Longest tokenized example; longer are cut."})
    seed: int = field(default=0, metadata={"help": "Seed for reproducible rounds."})


@dataclass
class RoundConfig:
    database_url: str = field(metadata={"help": "The feedback store's SQLAlchemy URL."})
    adapters_dir: Path = field(metadata={"help": "The adapter registry folder (one subfolder per version)."})
    base_model: Path = field(metadata={"help": "The base model's checkpoint folder."})
    device: str = field(default="auto", metadata={"help": "auto, cpu or cuda."})
    activate: bool = field(
        default=True,
        metadata={
            "help": "Make the new adapter the active version when it passes the gate (else it stays a candidate)."
        },
    )
    system_prompt: str = field(
        default="", metadata={"help": "The bot's system prompt (for the golden set and the gate's reference answers)."}
    )
    pii_scrub: list[str] = field(
        default_factory=lambda: ["email", "phone", "card", "iban"],
        metadata={"help": "Personal data replaced by placeholders in the datasets."},
    )
    min_new_feedback: int = field(
        default=0,
        metadata={
            "help": "Train only when at least this many votes and "
            "approved corrections changed since the last round "
            "(0: always)."
        },
    )
    progress: bool = field(default=True, metadata={"help": "Show progress bars."})
    methods: str = field(
        default="auto",
        metadata={
            "help": "auto, or a comma-separated list of sft, dpo, kto; "
            "they run in that order, each continuing the same adapter."
        },
    )
    processes: int = field(
        default=1,
        metadata={
            "help": "Processes that train together, data-parallel (DDP: one per GPU, or CPU processes with gloo); "
            "1 trains in the round's own process (`trainer.launch`)."
        },
    )
    lora: LoraSettings = field(default_factory=LoraSettings)
    sft: SFTSettings = field(default_factory=SFTSettings)
    preference: PreferenceSettings = field(default_factory=PreferenceSettings)
    gate: GateSettings = field(default_factory=GateSettings)

    def to_dict(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}
