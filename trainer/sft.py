"""Supervised fine-tuning of a LoRA adapter on conversational prompt/completion records (TRL)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from trainer.config import LoraSettings, SFTSettings
from trainer.lora import Method, TrainStats, plan_steps, train_lora

__all__ = ["TrainStats", "plan_steps", "train_sft"]


def train_sft(
    records: list[dict],
    *,
    base_model: Path,
    out_dir: Path,
    device: str,
    lora: LoraSettings,
    sft: SFTSettings,
    log: Callable[[str], None],
    progress: bool = True,
    init_adapter: Path | None = None,
) -> TrainStats:
    """Train a LoRA adapter on `records` and save it (adapter weights and config only) to `out_dir`."""
    from trl import SFTConfig, SFTTrainer

    return train_lora(
        Method(SFTConfig, SFTTrainer),
        records,
        base_model=base_model,
        out_dir=out_dir,
        device=device,
        lora=lora,
        settings=sft,
        log=log,
        progress=progress,
        init_adapter=init_adapter,
    )
