"""What every training method shares: the LoRA config, the step plan, precision by hardware, per-step
loss logging, and running a TRL trainer with a LoRA adapter to a saved adapter folder."""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from feedback.export import GROUNDED
from trainer.config import LoraSettings
from trainer.hardware import precision_args


@dataclass
class TrainStats:
    examples: int
    steps: int
    seconds: float
    losses: list[float] = field(default_factory=list)
    precision: str = "fp32"

    @property
    def first_loss(self) -> float | None:
        return self.losses[0] if self.losses else None

    @property
    def final_loss(self) -> float | None:
        return self.losses[-1] if self.losses else None


def lora_config(lora: LoraSettings):
    from peft import LoraConfig

    targets = lora.target_modules
    if targets != "all-linear":
        targets = [name.strip() for name in targets.split(",") if name.strip()]
    return LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets, task_type="CAUSAL_LM"
    )


def plan(examples: int, settings, min_batch: int = 1) -> tuple[int, int]:
    """(batch size, optimizer steps) for a round: `epochs` passes over the examples in batches of up to
    `batch_size`, smaller when there are few examples so that an epoch still has
    `min_steps_per_epoch` updates; never fewer than `min_steps` steps. Passes, not steps, are what a
    small set of examples over-learns: 24 steps over 8 corrections broke SmolLM2's other answers."""
    per_epoch_floor = getattr(settings, "min_steps_per_epoch", 1)
    batch = max(min_batch, min(settings.batch_size, math.ceil(examples / per_epoch_floor)))
    steps = max(settings.min_steps, math.ceil(examples / batch) * settings.epochs)
    return batch, steps


def plan_steps(examples: int, settings) -> int:
    return plan(examples, settings)[1]


def loss_callback(losses: list[float], log: Callable[[str], None]):
    from transformers import TrainerCallback

    class LossLog(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))
                log(f"step {state.global_step}/{state.max_steps} loss {logs['loss']:.4f}")

    return LossLog()


@dataclass(frozen=True)
class Method:
    """One TRL method: its config and trainer classes, and its own config fields for a round."""

    config_cls: type
    trainer_cls: type
    extra: dict = field(default_factory=dict)


def train_lora(
    method: Method,
    records: list[dict],
    *,
    base_model: Path,
    out_dir: Path,
    device: str,
    lora: LoraSettings,
    settings,
    log: Callable[[str], None],
    progress: bool = True,
    min_batch: int = 1,
    init_adapter: Path | None = None,
) -> TrainStats:
    """Train a LoRA adapter on `records` with `method` and save it (adapter weights and config only)
    to `out_dir`. `settings` carries epochs, min_steps, learning_rate, batch_size, max_length, seed.
    With `init_adapter`, that adapter is trained further (preference methods then use the model
    without it as their reference) instead of a fresh one."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback, set_seed

    set_seed(settings.seed)
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32)
    peft_config = lora_config(lora)
    if init_adapter is not None:
        from peft import PeftModel

        model, peft_config = PeftModel.from_pretrained(model, str(init_adapter), is_trainable=True), None
    batch, steps = plan(len(records), settings, min_batch)
    losses: list[float] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="supportloop-train-") as work:
        args = method.config_cls(
            output_dir=work,
            max_steps=steps,
            per_device_train_batch_size=batch,
            learning_rate=settings.learning_rate,
            max_length=settings.max_length,
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            seed=settings.seed,
            disable_tqdm=not progress,
            dataloader_num_workers=0,
            **precision_args(device),
            **method.extra,
        )
        trainer = method.trainer_cls(
            model=model,
            args=args,
            train_dataset=Dataset.from_list([{k: v for k, v in r.items() if k != GROUNDED} for r in records]),
            processing_class=tokenizer,
            peft_config=peft_config,
            callbacks=[loss_callback(losses, log)],
        )
        trainer.remove_callback(PrinterCallback)  # our callback logs each step once, in our format
        trainer.train()
        if trainer.is_world_process_zero():  # one writer when several processes train (`trainer.launch`)
            trainer.model.save_pretrained(out_dir)
    precision = "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32"
    return TrainStats(
        examples=len(records), steps=steps, seconds=time.perf_counter() - started, losses=losses, precision=precision
    )
