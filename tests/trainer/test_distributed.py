"""Training on several processes (issue 22): the same round, its training data-parallel over 2 CPU
processes (DDP with gloo, launched as on several GPUs), on the tiny model."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from feedback import repo
from feedback.models import RunOutcome
from tests.trainer.test_round_steps import FAST, RECORDS, _config, _correct
from trainer.config import LoraSettings
from trainer.launch import train_distributed
from trainer.round import run_round


def test_two_cpu_processes_train_one_adapter_together(tiny_model, tmp_path):
    logs: list[str] = []
    stats = train_distributed(
        "sft", RECORDS, processes=2, base_model=tiny_model, out_dir=tmp_path / "adapter", device="cpu",
        lora=LoraSettings(r=4, alpha=8), settings=FAST, log=logs.append,
    )  # fmt: skip
    assert "sft: training on 2 processes (DDP, gloo)" in logs and "sft: 2 processes trained together" in logs
    assert stats.steps == 3 and len(stats.losses) == 3 and stats.precision == "fp32"
    assert sum(line.startswith("step ") for line in logs) == 3  # each step logged once, by process 0
    weights = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert any(t.abs().sum() > 0 for name, t in weights.items() if "lora_B" in name)  # trained
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["r"] == 4


def test_a_round_with_two_processes_publishes_like_a_one_process_round(store, tiny_model, tmp_path):
    _correct(store, "When is check-in?", "At noon.", "Check-in is from 3:30pm to 9:00pm.")
    config = _config(store, tiny_model, tmp_path)
    config.processes = 2
    logs: list[str] = []
    result = run_round(config, log=logs.append)
    assert result.outcome == RunOutcome.published, result.message
    assert any("2 processes trained together" in line for line in logs)
    with store.session() as s:
        assert repo.active_adapter(s).version == result.version


def test_a_failed_process_fails_the_training_with_its_output(tiny_model, tmp_path):
    with pytest.raises(RuntimeError, match="distributed training failed"):
        train_distributed(
            "sft", RECORDS, processes=2, base_model=tmp_path / "no-model", out_dir=tmp_path / "adapter",
            device="cpu", lora=LoraSettings(r=4, alpha=8), settings=FAST, log=lambda _l: None,
        )  # fmt: skip
    assert not (tmp_path / "adapter").exists()


@pytest.mark.parametrize("value", ["0", "-1", "two"])
def test_train_refuses_a_number_of_processes_that_is_not_one_or_more(value, capsys):
    from bot.cli import build_parser

    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["train", "--processes", value])
    assert exit_.value.code == 2 and "is not a number of processes (1 or more)" in capsys.readouterr().err
    assert build_parser().parse_args(["train", "--processes", "4"]).processes == 4
