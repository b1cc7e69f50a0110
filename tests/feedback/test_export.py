"""Training exports: formats, PII scrubbing, `since`, the CLI, and TRL's trainers accepting them."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import pytest

from bot.cli import main
from feedback import repo
from feedback.export import dpo_records, export, kto_records, records, sft_records
from feedback.models import Role, StaffRole, Thumb
from feedback.pii import Scrubber

SECRET = (
    "Mail me at jane.doe+test@example.co.uk or call +44 20 7946 0958; card 4111 1111 1111 1111, "
    "IBAN GB82 WEST 1234 5698 7654 32"
)
LEAKS = ("jane.doe", "7946", "4111", "GB82")


def _exchange(s, question: str, answer: str, system: str = "Be brief.") -> tuple:
    conversation = repo.get_or_create_conversation(s, conversation_id=None, system_prompt=system)
    user = repo.add_message(s, conversation_id=conversation.id, role=Role.user, text=question)
    bot = repo.add_message(s, conversation_id=conversation.id, role=Role.assistant, text=answer, adapter_version="base")
    return user, bot


@pytest.fixture
def filled(any_store):
    """Four answers: corrected (twice, newest wins), thumbed up, thumbed down and corrected, thumbed down."""
    with any_store.session() as s:
        agent, _ = repo.create_staff(s, name="agent", role=StaffRole.agent)
        _, a = _exchange(s, f"When is check-in? {SECRET}", "At noon.")
        repo.add_correction(s, message_id=a.id, actor=agent, text="From 3pm.", approve=True)
        repo.add_correction(s, message_id=a.id, actor=agent, text="From 3:30pm to 9pm.", approve=True)
        _, b = _exchange(s, "Is there parking?", "Yes, free parking on site.")
        repo.set_feedback(s, message_id=b.id, thumb=Thumb.up)
        _, c = _exchange(s, "Do you have a pool?", "No pool. Email pool@hotel.example for details.")
        repo.set_feedback(s, message_id=c.id, thumb=Thumb.down, reason="wrong")
        repo.add_correction(s, message_id=c.id, actor=agent, text="Yes, an outdoor pool, open 8am-8pm.", approve=True)
        _, d = _exchange(s, "Pets?", "Maybe.")
        repo.set_feedback(s, message_id=d.id, thumb=Thumb.down, reason="unhelpful")
        repo.add_correction(s, message_id=d.id, actor=agent, text="draft, not approved", approve=False)
    return any_store


def _completions(rows, key="completion") -> list[str]:
    return [r[key][0]["content"] for r in rows]


def test_sft_has_approved_corrections_and_thumbed_up_answers(filled):
    with filled.session() as s:
        rows = sft_records(s)
    assert _completions(rows) == [
        "From 3:30pm to 9pm.",
        "Yes, an outdoor pool, open 8am-8pm.",
        "Yes, free parking on site.",
    ]
    assert rows[0]["prompt"][0] == {"role": "system", "content": "Be brief."}
    assert rows[0]["prompt"][1]["role"] == "user" and rows[0]["prompt"][1]["content"].startswith("When is check-in?")


def test_dpo_pairs_the_correction_with_the_original_answer(filled):
    with filled.session() as s:
        rows = dpo_records(s)
    assert [(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in rows] == [
        ("From 3:30pm to 9pm.", "At noon."),
        ("Yes, an outdoor pool, open 8am-8pm.", "No pool. Email [EMAIL] for details."),
    ]


def test_kto_labels_thumbs_and_adds_corrections_as_desirable(filled):
    with filled.session() as s:
        rows = kto_records(s)
    labelled = sorted((r["completion"][0]["content"], r["label"]) for r in rows)
    assert labelled == sorted(
        [
            ("Yes, free parking on site.", True),
            ("No pool. Email [EMAIL] for details.", False),
            ("Maybe.", False),
            ("From 3:30pm to 9pm.", True),
            ("Yes, an outdoor pool, open 8am-8pm.", True),
        ]
    )


def test_no_personal_data_in_any_export(filled, tmp_path):
    with filled.session() as s:
        for fmt in ("sft", "dpo", "kto"):
            export(s, fmt, tmp_path / f"{fmt}.jsonl")
            text = (tmp_path / f"{fmt}.jsonl").read_text()
            assert [leak for leak in LEAKS if leak in text] == [], fmt
            assert "[EMAIL]" in text, fmt
        assert "[CARD]" in text and "[IBAN]" in text and "[PHONE]" in text
        unscrubbed = sft_records(s, scrubber=Scrubber([]))
    assert "4111 1111 1111 1111" in json.dumps(unscrubbed)  # scrubbing is what removed it


def test_since_keeps_only_newer_feedback(filled):
    later = datetime.now(UTC) + timedelta(seconds=1)
    with filled.session() as s:
        assert records(s, "sft", since=later) == []
        _, e = _exchange(s, "Late checkout?", "Until noon for a fee.")
        time.sleep(1.1)
        repo.set_feedback(s, message_id=e.id, thumb=Thumb.up)
        assert _completions(records(s, "sft", since=later)) == ["Until noon for a fee."]
        with pytest.raises(ValueError, match="unknown export format"):
            records(s, "csv")


def test_export_report_and_cli(filled, tmp_path, monkeypatch, capsys):
    with filled.session() as s:
        report = export(s, "dpo", tmp_path / "dpo.jsonl")
    assert report.records == 2 and report.bytes == (tmp_path / "dpo.jsonl").stat().st_size
    assert report.sha256.startswith("sha256:")
    monkeypatch.setenv("SUPPORTLOOP_DATABASE_URL", filled.url)
    assert main(["export", "--format", "dpo", str(tmp_path / "cli.jsonl")]) == 0
    out = capsys.readouterr().out
    assert "2 records" in out and report.sha256 in out
    assert (tmp_path / "cli.jsonl").read_bytes() == (tmp_path / "dpo.jsonl").read_bytes()
    with pytest.raises(SystemExit):
        main(["export", "--format", "dpo", "--since", "yesterday", str(tmp_path / "x.jsonl")])
    assert "not an ISO date" in capsys.readouterr().err


def _trainer(kind: str, model_path, dataset, work):
    """A TRL trainer of `kind` on the tiny model with LoRA; two steps on the CPU."""
    import torch
    import trl
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    common = dict(
        output_dir=str(work),
        max_steps=2,
        per_device_train_batch_size=2,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        bf16=False,
        logging_steps=1,
        gradient_checkpointing=False,
    )
    config_cls, trainer_cls = {
        "sft": (trl.SFTConfig, trl.SFTTrainer),
        "dpo": (trl.DPOConfig, trl.DPOTrainer),
        "kto": (trl.KTOConfig, trl.KTOTrainer),
    }[kind]
    extra = {"per_device_train_batch_size": 4} if kind == "kto" else {}
    return trainer_cls(
        model=model,
        args=config_cls(**{**common, **extra}),
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=LoraConfig(r=4, target_modules="all-linear"),
    )


@pytest.mark.parametrize("fmt", ["sft", "dpo", "kto"])
def test_trl_trainers_take_the_exports(fmt, filled, tiny_model, tmp_path):
    from datasets import load_dataset

    path = tmp_path / f"{fmt}.jsonl"
    with filled.session() as s:
        export(s, fmt, path)
    dataset = load_dataset("json", data_files=str(path), split="train")
    assert len(dataset) == {"sft": 3, "dpo": 2, "kto": 5}[fmt]
    trainer = _trainer(fmt, tiny_model, dataset, tmp_path / "work")
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_B" in n}
    result = trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert result.global_step == 2 and len(losses) == 2 and all(loss == loss for loss in losses)
    changed = [n for n, p in trainer.model.named_parameters() if "lora_B" in n and not torch_equal(p, before[n])]
    assert changed, "training changed no LoRA weight"


def torch_equal(a, b) -> bool:
    import torch

    return torch.equal(a.detach(), b)


GROUNDED_TURN = "Facts:\nCheck-out is at 10:30 am.\n\nAnswer using the facts. Question: When is check-out?"


def _grounded_store(store):
    """An answer that was grounded, thumbed down and corrected (approved), and a plain thumbed-up one."""
    with store.session() as s:
        agent, _ = repo.create_staff(s, name="agent", role=StaffRole.agent)
        conversation = repo.get_or_create_conversation(s, conversation_id=None, system_prompt="Be brief.")
        repo.add_message(s, conversation_id=conversation.id, role=Role.user, text="When is check-out?")
        answer = repo.add_message(s, conversation_id=conversation.id, role=Role.assistant, text="At noon.",
                                  adapter_version="base", grounding=GROUNDED_TURN)  # fmt: skip
        repo.set_feedback(s, message_id=answer.id, thumb=Thumb.down, reason="wrong")
        repo.add_correction(s, message_id=answer.id, actor=agent, text="Check-out is at 10:30 am.", approve=True)
        _, plain = _exchange(s, "Is there parking?", "Yes, free parking on site.")
        repo.set_feedback(s, message_id=plain.id, thumb=Thumb.up)
    return store


def test_a_grounded_answer_exports_as_the_model_saw_it_and_as_the_customer_wrote_it(any_store):
    with _grounded_store(any_store).session() as s:
        exported = {fmt: records(s, fmt) for fmt in ("sft", "dpo", "kto")}
    for fmt, rows in exported.items():
        turns = [(r.get("grounded", False), r["prompt"][-1]["content"]) for r in rows]
        assert turns[:2] == [(True, GROUNDED_TURN), (False, "When is check-out?")], fmt
        assert all(r["prompt"][0] == {"role": "system", "content": "Be brief."} for r in rows)
    assert _completions(exported["sft"]) == ["Check-out is at 10:30 am."] * 2 + ["Yes, free parking on site."]
    assert [r["label"] for r in exported["kto"]] == [False, False, True, True, True]


@pytest.mark.parametrize("fmt", ["sft", "dpo", "kto"])
def test_trl_trainers_take_exports_with_grounded_records(fmt, store, tiny_model, tmp_path):
    """The `grounded` key some records carry is one more column: TRL's trainers train on the file as is."""
    from datasets import load_dataset

    path = tmp_path / f"{fmt}.jsonl"
    with _grounded_store(store).session() as s:
        export(s, fmt, path)
    dataset = load_dataset("json", data_files=str(path), split="train")
    assert "grounded" in dataset.column_names
    trainer = _trainer(fmt, tiny_model, dataset, tmp_path / "work")
    assert trainer.train().global_step == 2
