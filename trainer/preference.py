"""Preference training of a LoRA adapter with TRL: DPO on (correction, original answer) pairs and KTO
on thumbs (unpaired, labelled answers). The reference model is the base without the adapter (PEFT),
so no second copy of the model is loaded."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from trainer.config import LoraSettings, PreferenceSettings
from trainer.lora import Method, TrainStats, train_lora

KTO_RATIO_RANGE = (1.0, 4 / 3)  # TRL: desirable_weight·n_desirable / (undesirable_weight·n_undesirable)


def kto_weights(records: list[dict]) -> tuple[float, float]:
    """(desirable_weight, undesirable_weight) that balance the classes: TRL recommends the weighted
    ratio of desirable to undesirable examples to lie in [1, 4/3]; thumbs are rarely balanced (a
    support bot usually collects more downs than ups, or the reverse), so the minority class is
    weighted up until the ratio is 1. With one class missing the weights stay 1."""
    desirable = sum(1 for r in records if r["label"])
    undesirable = len(records) - desirable
    if not desirable or not undesirable:
        return 1.0, 1.0
    if desirable < undesirable:
        return undesirable / desirable, 1.0
    return 1.0, desirable / undesirable


def train_dpo(
    records: list[dict],
    *,
    base_model: Path,
    out_dir: Path,
    device: str,
    lora: LoraSettings,
    settings: PreferenceSettings,
    log: Callable[[str], None],
    progress: bool = True,
    init_adapter: Path | None = None,
) -> TrainStats:
    """DPO on records with `prompt`, `chosen` and `rejected` (conversational)."""
    from trl import DPOConfig, DPOTrainer

    return train_lora(
        Method(DPOConfig, DPOTrainer, {"beta": settings.beta}),
        records,
        base_model=base_model,
        out_dir=out_dir,
        device=device,
        lora=lora,
        settings=settings,
        log=log,
        progress=progress,
        init_adapter=init_adapter,
    )


def train_kto(
    records: list[dict],
    *,
    base_model: Path,
    out_dir: Path,
    device: str,
    lora: LoraSettings,
    settings: PreferenceSettings,
    log: Callable[[str], None],
    progress: bool = True,
    init_adapter: Path | None = None,
) -> TrainStats:
    """KTO on records with `prompt`, `completion` and a boolean `label`, classes balanced by weight."""
    from trl import KTOConfig, KTOTrainer

    desirable, undesirable = kto_weights(records)
    log(f"kto: desirable weight {desirable:.2f}, undesirable weight {undesirable:.2f}")
    extra = {"beta": settings.beta, "desirable_weight": desirable, "undesirable_weight": undesirable}
    return train_lora(
        Method(KTOConfig, KTOTrainer, extra),
        records,
        base_model=base_model,
        out_dir=out_dir,
        device=device,
        lora=lora,
        settings=settings,
        log=log,
        progress=progress,
        min_batch=2,
        init_adapter=init_adapter,
    )
