"""The evaluation gate on the tiny model: it accepts a candidate that learned the new corrections and
kept the old ones, and rejects damaged candidates with the reason; unreadable adapters are reported."""

from __future__ import annotations

import random

import pytest

from trainer.config import LoraSettings, SFTSettings
from trainer.evaluate import Item
from trainer.gate import GateInputs, GateSettings, evaluate
from trainer.sft import train_sft

SYSTEM = "Be brief."
LORA = LoraSettings(r=16, alpha=32)
LEARNS = SFTSettings(epochs=1, min_steps=150, min_steps_per_epoch=1, learning_rate=1e-2, batch_size=5, max_length=128)


def _item(question: str, answer: str) -> Item:
    return Item([{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}], answer)


OLD = [
    _item("When is check-in?", "Check-in is from 3:30pm to 9:00pm."),
    _item("Is parking free?", "No, parking costs extra."),
    _item("Do you have wifi?", "Yes, free wifi is available in all rooms."),
]
NEW = [
    _item("Are pets allowed?", "No, pets are not allowed."),
    _item("Is breakfast included?", "Yes, breakfast is included in the price."),
]


def _train(tiny_model, folder, items, settings=LEARNS):
    records = [{"prompt": i.prompt, "completion": [{"role": "assistant", "content": i.reference}]} for i in items]
    train_sft(
        records,
        base_model=tiny_model,
        out_dir=folder,
        device="cpu",
        lora=LORA,
        sft=settings,
        log=lambda _l: None,
        progress=False,
    )
    return folder


def _gate(tiny_model, candidate, active, new=NEW, settings=None):
    return evaluate(
        base_model=tiny_model,
        device="cpu",
        candidate=candidate,
        active=("v1", active),
        inputs=GateInputs(new, OLD),
        settings=settings or GateSettings(max_new_tokens=24),
        system_prompt=SYSTEM,
        log=lambda _l: None,
    )


@pytest.fixture(scope="module")
def active(tiny_model, tmp_path_factory):
    """The serving adapter: it learned the earlier rounds' corrections (the regression set)."""
    return _train(tiny_model, tmp_path_factory.mktemp("gate") / "active", OLD)


def _failed(verdict) -> set[str]:
    return {c.name for c in verdict.checks if not c.passed}


def test_a_candidate_that_learned_the_new_corrections_and_kept_the_old_passes(tiny_model, active, tmp_path):
    verdict = _gate(tiny_model, _train(tiny_model, tmp_path / "good", OLD + NEW), active)
    assert verdict.passed, verdict.describe()
    assert verdict.metrics["new"]["candidate"] >= 0.8 and verdict.metrics["regression"]["items"] == 3
    assert verdict.metrics["regression"]["candidate"] >= verdict.metrics["regression"]["active"] - 0.02
    assert {c.name for c in verdict.checks} == {
        "learned",
        "no regression (regression)",
        "perplexity",
        "no empty answers",
        "no repetition loops",
        "no runaway answers",
    }
    assert verdict.to_dict()["compared_with"] == "v1"


def test_a_candidate_trained_on_random_token_corrections_is_rejected(tiny_model, active, tmp_path):
    rng = random.Random(0)
    words = ["the", "a", "room", "price", "card", "noon", "extra", "city", "bus", "pool", "gym", "bar"]
    noise = [_item(i.prompt[-1]["content"], " ".join(rng.choice(words) for _ in range(8))) for i in NEW]
    verdict = _gate(tiny_model, _train(tiny_model, tmp_path / "noise", noise), active, new=noise)
    assert not verdict.passed and "no regression (regression)" in _failed(verdict), verdict.describe()
    assert verdict.metrics["regression"]["candidate"] < verdict.metrics["regression"]["active"] - 0.02


def test_a_candidate_trained_at_a_diverging_learning_rate_is_rejected(tiny_model, active, tmp_path):
    diverging = SFTSettings(
        epochs=1, min_steps=150, min_steps_per_epoch=1, learning_rate=5.0, batch_size=5, max_length=128
    )
    verdict = _gate(tiny_model, _train(tiny_model, tmp_path / "diverged", OLD + NEW, diverging), active)
    assert not verdict.passed and {"learned", "no regression (regression)"} <= _failed(verdict), verdict.describe()


def test_an_unreadable_active_adapter_is_reported_and_the_base_model_compared_instead(tiny_model, active, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text("{not json")
    logs: list[str] = []
    verdict = evaluate(
        base_model=tiny_model,
        device="cpu",
        candidate=active,
        active=("v0", broken),
        inputs=GateInputs(NEW, OLD),
        settings=GateSettings(max_new_tokens=24),
        system_prompt=SYSTEM,
        log=logs.append,
    )
    assert verdict.compared_with.startswith("base (active v0 unreadable")
    assert any("could not load adapter active" in line for line in logs)
    assert verdict.metrics["regression"]["candidate"] > verdict.metrics["regression"]["active"]  # vs base


def test_an_unreadable_candidate_is_rejected_not_crashed_on(tiny_model, active, tmp_path):
    (tmp_path / "empty").mkdir()
    verdict = _gate(tiny_model, tmp_path / "empty", active)
    assert not verdict.passed and _failed(verdict) == {"loads"}


def test_repetition_loops_are_detected_in_answers():
    from trainer.evaluate import Answer
    from trainer.gate import _degenerate

    texts = [
        "You can choose either home or ourdoordoordoordoordoordoor",
        "the the the the the",
        "Check-in is from 3:30pm to 9:00pm.",
        "Call 555-0100, or 555-0101 after 6pm.",
    ]
    assert _degenerate([Answer(t, True) for t in texts]) == 2


def _grounded(item: Item) -> Item:
    question = item.prompt[-1]["content"]
    turn = f"Facts:\nHotel › {question} {item.reference}\n\nAnswer using the facts. Question: {question}"
    return Item([*item.prompt[:-1], {"role": "user", "content": turn}], item.reference, grounded=True)


def test_grounded_corrections_are_checked_with_retrieval_on_and_off(tiny_model, active, tmp_path):
    new = NEW + [_grounded(i) for i in NEW]
    verdict = _gate(tiny_model, _train(tiny_model, tmp_path / "grounded", OLD + new), active, new=new)
    assert verdict.passed, verdict.describe()
    assert verdict.metrics["new"]["items"] == 2 and verdict.metrics["new_grounded"]["items"] == 2
    learned = {c.name: c.detail for c in verdict.checks if c.name.startswith("learned")}
    assert set(learned) == {"learned", "learned (retrieval on)"} and "retrieval off" in learned["learned"]
