"""DPO and KTO rounds on the tiny model: each logs a loss per step and moves the LoRA weights."""

from __future__ import annotations

import pytest
from safetensors.torch import load_file

from trainer.config import LoraSettings, PreferenceSettings
from trainer.preference import KTO_RATIO_RANGE, kto_weights, train_dpo, train_kto

PROMPT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "When is check-in?"}]


def _say(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


DPO = [
    {"prompt": PROMPT, "chosen": _say("From 3:30pm to 9:00pm."), "rejected": _say("At noon.")},
    {
        "prompt": [{"role": "user", "content": "Is parking free?"}],
        "chosen": _say("No, it costs extra."),
        "rejected": _say("Yes."),
    },
]
KTO = [
    {"prompt": PROMPT, "completion": _say("From 3:30pm to 9:00pm."), "label": True},
    {"prompt": PROMPT, "completion": _say("At noon."), "label": False},
    {"prompt": [{"role": "user", "content": "Pets?"}], "completion": _say("Maybe."), "label": False},
    {"prompt": [{"role": "user", "content": "Pool?"}], "completion": _say("No pool."), "label": False},
]
FAST = PreferenceSettings(epochs=1, min_steps=3, learning_rate=1e-2, batch_size=2, max_length=128)


@pytest.mark.parametrize("train, records", [(train_dpo, DPO), (train_kto, KTO)], ids=["dpo", "kto"])
def test_each_method_logs_a_loss_and_changes_the_lora_weights(train, records, tiny_model, tmp_path):
    logs: list[str] = []
    stats = train(
        records,
        base_model=tiny_model,
        out_dir=tmp_path / "adapter",
        device="cpu",
        lora=LoraSettings(r=4, alpha=8),
        settings=FAST,
        log=logs.append,
        progress=False,
    )
    assert stats.steps == 3 and len(stats.losses) == 3 and all(loss == loss for loss in stats.losses)
    assert [line for line in logs if line.startswith("step ")][0].startswith("step 1/3 loss")
    weights = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    lora_b = [t for name, t in weights.items() if "lora_B" in name]
    assert lora_b and any(t.abs().sum() > 0 for t in lora_b)  # lora_B starts at zero; training moved it


def test_kto_weights_balance_the_classes():
    def records(ups: int, downs: int) -> list[dict]:
        return [{"label": True}] * ups + [{"label": False}] * downs

    for ups, downs in ((1, 3), (3, 1), (5, 5), (2, 7)):
        desirable, undesirable = kto_weights(records(ups, downs))
        ratio = desirable * ups / (undesirable * downs)
        assert KTO_RATIO_RANGE[0] <= ratio <= KTO_RATIO_RANGE[1] and min(desirable, undesirable) == 1.0
    assert kto_weights(records(4, 0)) == (1.0, 1.0)
