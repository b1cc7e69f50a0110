"""The trainer on a tiny random-weight model: datasets, a training step, publishing, adapter round trip."""

from __future__ import annotations

import json
import threading

import pytest
from safetensors.torch import load_file

from bot.runtime.hf_generator import HFGenerator
from bot.runtime.types import GenerationRequest
from feedback import repo
from feedback.models import AdapterStatus, Role, RunOutcome, TrainingRun
from feedback.registry import MANIFEST
from tests.support.common import registry_entries
from trainer.config import LoraSettings, RoundConfig, SFTSettings
from trainer.gate import GateSettings
from trainer.hardware import precision_args
from trainer.round import run_round
from trainer.sft import plan_steps, train_sft

RECORDS = [
    {
        "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "When is check-in?"}],
        "completion": [{"role": "assistant", "content": "Check-in is from 3:30pm to 9:00pm."}],
    },
    {
        "prompt": [{"role": "user", "content": "Is parking free?"}],
        "completion": [{"role": "assistant", "content": "No, parking costs extra."}],
    },
]
FAST = SFTSettings(epochs=1, min_steps=3, learning_rate=1e-2, batch_size=2, max_length=128)
LEARNS = SFTSettings(
    epochs=1, min_steps=150, min_steps_per_epoch=1, learning_rate=1e-2, batch_size=4, max_length=128
)  # the tiny model memorizes


def test_plan_steps_has_a_floor():
    assert plan_steps(2, SFTSettings(epochs=10, min_steps=24, batch_size=8)) == 24
    assert plan_steps(48, SFTSettings(epochs=10, min_steps=24, batch_size=8)) == 60


def test_few_examples_get_smaller_batches_not_more_passes():
    from trainer.lora import plan

    assert [plan(n, SFTSettings()) for n in (1, 8, 48, 100)] == [(1, 5), (2, 20), (8, 30), (8, 65)]
    assert plan(1, SFTSettings(), min_batch=2) == (2, 5)  # KTO needs two examples a batch


def test_precision_on_cpu_is_fp32_whatever_trl_defaults_to():
    args = precision_args("cpu")
    assert args == {"bf16": False, "fp16": False, "use_cpu": True, "gradient_checkpointing": False}


def test_training_step_changes_lora_weights_and_logs_loss(tiny_model, tmp_path):
    logs: list[str] = []
    stats = train_sft(
        RECORDS,
        base_model=tiny_model,
        out_dir=tmp_path / "adapter",
        device="cpu",
        lora=LoraSettings(r=4, alpha=8),
        sft=FAST,
        log=logs.append,
        progress=False,
    )
    assert stats.steps == 3 and len(stats.losses) == 3 and all(loss > 0 for loss in stats.losses)
    assert stats.precision == "fp32" and logs[0].startswith("step 1/3 loss")
    weights = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    lora_b = [t for name, t in weights.items() if "lora_B" in name]
    assert lora_b and any(t.abs().sum() > 0 for t in lora_b)  # lora_B starts at zero; training moved it
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 4


def _correct(store, question: str, answer: str, correction: str) -> None:
    with store.session() as s:
        conversation = repo.get_or_create_conversation(s, conversation_id=None, system_prompt="Be brief.")
        repo.add_message(s, conversation_id=conversation.id, role=Role.user, text=question)
        message = repo.add_message(
            s, conversation_id=conversation.id, role=Role.assistant, text=answer, adapter_version="base"
        )
        staff = repo.staff_by_token(s, token="x") or repo.create_staff(s, name=f"s-{message.id[:6]}")[0]
        repo.add_correction(s, message_id=message.id, actor=staff, text=correction, approve=True)


def _config(store, tiny_model, tmp_path) -> RoundConfig:
    return RoundConfig(
        database_url=store.url,
        adapters_dir=tmp_path / "adapters",
        base_model=tiny_model,
        device="cpu",
        progress=False,
        lora=LoraSettings(r=16, alpha=32),
        sft=LEARNS,
        system_prompt="Be brief.",
        gate=GateSettings(max_new_tokens=24),
    )


def test_round_without_corrections_is_skipped_and_recorded(store, tiny_model, tmp_path):
    result = run_round(_config(store, tiny_model, tmp_path), log=lambda _l: None)
    assert result.outcome == RunOutcome.skipped and result.version is None
    assert result.message.startswith("nothing to train: no approved corrections")
    from sqlmodel import select

    with store.session() as s:
        runs = list(s.exec(select(TrainingRun)))
    assert [r.outcome for r in runs] == ["skipped"] and runs[0].finished_at is not None
    assert "nothing to train" in runs[0].log


def test_round_publishes_registers_and_serves(store, tiny_model, tmp_path):
    _correct(store, "When is check-in?", "At noon.", "Check-in is from 3:30pm to 9:00pm.")
    config = _config(store, tiny_model, tmp_path)
    first = run_round(config, log=lambda _l: None)
    second = run_round(config, log=lambda _l: None)
    assert first.version != second.version and second.parent == first.version and first.parent == "base"
    assert registry_entries(config.adapters_dir) == sorted([first.version, second.version])
    assert first.outcome == second.outcome == RunOutcome.published
    manifest = json.loads((second.path / MANIFEST).read_text())
    assert manifest["version"] == second.version and manifest["training"]["sft"]["examples"] == 1
    assert manifest["base_model"]["id"].startswith(tiny_model.name + "@")
    assert manifest["base_model"]["weights"].startswith("sha256:") and manifest["parent"] == first.version
    assert manifest["gate"]["passed"] and manifest["status"] == "active" and manifest["packages"]["trl"]
    assert manifest["hyperparameters"]["lora"]["r"] == 16 and manifest["timings"]["train_s"] > 0
    with store.session() as s:
        active = repo.active_adapter(s)
        assert active.version == second.version and active.status == AdapterStatus.active
        assert json.loads(active.metrics_json)["gate"]["passed"]
        run = s.get(TrainingRun, second.run_id)
        assert (
            run.outcome == "published"
            and run.snapshot_at is not None
            and json.loads(run.progress_json)["phase"] == "done"
        )

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), str(second.path))
    assert plain.peft_config["default"].r == 16  # a registry folder is a plain PEFT adapter folder

    generator = HFGenerator(tiny_model, device="cpu")
    generator.load()
    try:
        generator.load_adapter(second.version, second.path)
        request = GenerationRequest(
            [{"role": "user", "content": "When is check-in?"}], adapter_version=second.version, max_new_tokens=5
        )
        result = generator.submit(request, lambda _t: None, threading.Event()).result(timeout=60)
    finally:
        generator.close()
    assert result.adapter_version == second.version and result.completion_tokens > 0


def test_choose_methods_by_data_and_by_request():
    from trainer.round import choose_methods

    sizes = {"sft": 3, "dpo": 2, "kto": 5}
    assert choose_methods("auto", sizes) == ["sft"]
    assert choose_methods("auto", {"sft": 0, "dpo": 0, "kto": 4}) == ["kto"]
    assert choose_methods("auto", {"sft": 0, "dpo": 0, "kto": 1}) == []
    assert choose_methods("kto, sft,dpo", sizes) == ["sft", "dpo", "kto"]
    assert choose_methods("dpo", {"sft": 1, "dpo": 0, "kto": 0}) == []
    with pytest.raises(ValueError, match="unknown training methods"):
        choose_methods("sft,ppo", sizes)


def test_a_round_can_stack_sft_dpo_and_kto_on_one_adapter(store, tiny_model, tmp_path):
    from dataclasses import replace

    from feedback.models import Thumb
    from trainer.config import PreferenceSettings

    _correct(store, "When is check-in?", "At noon.", "Check-in is from 3:30pm to 9:00pm.")
    _correct(store, "Is parking free?", "Yes.", "No, parking costs extra.")
    with store.session() as s:
        answers = [m for m in repo.list_corrections(s)]
        for correction, thumb in zip(answers, (Thumb.down, Thumb.up)):
            repo.set_feedback(s, message_id=correction.message_id, thumb=thumb)
    config = replace(
        _config(store, tiny_model, tmp_path),
        methods="sft,dpo,kto",
        preference=PreferenceSettings(epochs=1, min_steps=2, learning_rate=1e-2, batch_size=2, max_length=128),
    )
    logs: list[str] = []
    summary = run_round(config, log=logs.append)
    assert list(summary.stats) == ["sft", "dpo", "kto"]
    assert all(len(s.losses) == s.steps for s in summary.stats.values())
    manifest = json.loads((summary.path / MANIFEST).read_text())
    assert manifest["methods"] == ["sft", "dpo", "kto"]
    assert {m: d["examples"] for m, d in manifest["datasets"].items()} == {"sft": 2, "dpo": 2, "kto": 4}
    assert any("continuing the adapter of sft" in line for line in logs)
    assert registry_entries(config.adapters_dir) == [summary.version]  # no staging left
    from sqlmodel import select

    from feedback.models import Adapter

    with store.session() as s:  # (published or, after DPO and KTO at this rate on the tiny model, rejected)
        row = s.exec(select(Adapter).where(Adapter.version == summary.version)).one()
        assert json.loads(row.datasets_json)["dpo"]["hash"].startswith("sha256:")


@pytest.mark.parametrize("damage", ["weights", "manifest"])
def test_a_corrupted_active_adapter_is_reported_and_skipped_not_crashed_on(store, tiny_model, tmp_path, damage):
    _correct(store, "When is check-in?", "At noon.", "Check-in is from 3:30pm to 9:00pm.")
    config = _config(store, tiny_model, tmp_path)
    first = run_round(config, log=lambda _l: None)
    if damage == "weights":
        weights = first.path / "adapter_model.safetensors"
        weights.write_bytes(weights.read_bytes()[:100])  # truncated
    else:
        (first.path / MANIFEST).write_text("{truncated")
    _correct(store, "Is parking free?", "Yes.", "No, parking costs extra.")
    logs: list[str] = []
    second = run_round(config, log=logs.append)
    assert second.outcome == RunOutcome.published and second.parent == first.version
    assert second.verdict.compared_with.startswith("base (active " + first.version)
    assert any(first.version in line and ("could not load" in line or "skipping" in line) for line in logs)
