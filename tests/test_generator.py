"""The HF generator on the tiny model: UTF-8-safe streaming, context truncation, adapter validation."""
from __future__ import annotations

import json
import shutil
import threading

import pytest
import torch
from transformers import AutoTokenizer

from bot.generator import AdapterError, GenerationRequest, HFGenerator, Utf8Streamer
from trainer.config import LoraSettings, SFTSettings
from trainer.sft import train_sft

RECORDS = [{"prompt": [{"role": "user", "content": "When is check-in?"}],
            "completion": [{"role": "assistant", "content": "From 3:30pm."}]}]


def test_streamer_emits_only_complete_characters(tiny_model):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    text = "Prix: 5 € — café ☕ 😀 ok"
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert any("\ufffd" in tokenizer.decode([i]) for i in ids)  # some tokens split characters
    pieces: list[str] = []
    streamer = Utf8Streamer(tokenizer, pieces.append)
    streamer.put(torch.tensor([[0]]))  # the prompt, which generate() pushes first
    for token in ids:
        streamer.put(torch.tensor([token]))
    streamer.end()
    assert "".join(pieces) == text and not any("\ufffd" in p for p in pieces)


@pytest.fixture(scope="module")
def generator(tiny_model) -> HFGenerator:
    generator = HFGenerator(tiny_model, device="cpu")
    generator.load()
    return generator


@pytest.fixture(scope="module")
def adapter(tiny_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("adapter")
    train_sft(RECORDS, base_model=tiny_model, out_dir=folder, device="cpu", lora=LoraSettings(r=4, alpha=8),
              sft=SFTSettings(epochs=1, min_steps=2, batch_size=1, learning_rate=1e-2), log=lambda _l: None,
              progress=False)
    return folder


def test_long_history_is_truncated_oldest_first_keeping_system(generator):
    system = {"role": "system", "content": "SYSTEM-PROMPT"}
    turns = [{"role": r, "content": f"turn {i} " + "words " * 20} for i in range(40)
             for r in (("user",) if i % 2 == 0 else ("assistant",))]
    turns.append({"role": "user", "content": "last question"})
    inputs = generator._encode([system] + turns, max_new_tokens=64)
    ids = inputs["input_ids"][0]
    assert len(ids) <= generator.context_window - 64
    text = generator.tokenizer.decode(ids)
    assert text.count("SYSTEM-PROMPT") == 1 and "last question" in text and "turn 0 " not in text


def test_generate_streams_and_counts_tokens(generator):
    pieces: list[str] = []
    request = GenerationRequest([{"role": "user", "content": "hello"}], max_new_tokens=6)
    result = generator.generate(request, pieces.append, threading.Event())
    assert result.adapter_version == "base" and 1 <= result.completion_tokens <= 6
    assert "".join(pieces).strip() == result.text


def test_cancel_stops_generation_early(generator):
    cancel = threading.Event()
    cancel.set()
    request = GenerationRequest([{"role": "user", "content": "hello"}], max_new_tokens=50)
    assert generator.generate(request, lambda _t: None, cancel).completion_tokens <= 1


def test_adapter_changes_output_and_base_stays_available(generator, adapter):
    base_before = _last_logits(generator)
    generator.load_adapter("v1-good", adapter)
    assert not torch.allclose(_last_logits(generator, "v1-good"), base_before)
    assert torch.allclose(_last_logits(generator), base_before)
    generator.unload_adapter("v1-good")
    assert "v1-good" not in generator.adapters and generator.peft is None
    assert torch.allclose(_last_logits(generator), base_before)


def _broken_copy(adapter, tmp_path, how: str):
    broken = tmp_path / how
    shutil.copytree(adapter, broken)
    weights = broken / "adapter_model.safetensors"
    if how == "truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif how == "foreign-modules":
        config = json.loads((broken / "adapter_config.json").read_text())
        config["target_modules"] = ["no_such_projection"]
        (broken / "adapter_config.json").write_text(json.dumps(config))
    elif how == "wrong-shapes":
        config = json.loads((broken / "adapter_config.json").read_text())
        config["r"] = 8
        (broken / "adapter_config.json").write_text(json.dumps(config))
    return broken


def _last_logits(generator: HFGenerator, version: str = "base") -> torch.Tensor:
    prompt = [{"role": "user", "content": "When is check-in?"}]
    with generator._serving(version) as model, torch.inference_mode():
        return model(**generator._encode(prompt, 8)).logits[0, -1]


@pytest.mark.parametrize("first", [True, False], ids=["as-first-adapter", "beside-a-live-adapter"])
@pytest.mark.parametrize("how", ["truncated", "foreign-modules", "wrong-shapes"])
def test_broken_adapter_is_refused_and_leaves_no_trace(tiny_model, adapter, tmp_path, how, first):
    from peft.tuners.tuners_utils import BaseTunerLayer

    generator = HFGenerator(tiny_model, device="cpu")
    generator.load()
    if not first:
        generator.load_adapter("v1-live", adapter)
    live = _last_logits(generator, "base" if first else "v1-live")
    with pytest.raises(AdapterError, match="v9-bad"):
        generator.load_adapter("v9-bad", _broken_copy(adapter, tmp_path, how))
    assert "v9-bad" not in generator.adapters
    assert torch.allclose(_last_logits(generator, "base" if first else "v1-live"), live)
    if first:
        assert not any(isinstance(m, BaseTunerLayer) for m in generator.model.modules())
    else:
        assert "v9-bad" not in generator.peft.peft_config
