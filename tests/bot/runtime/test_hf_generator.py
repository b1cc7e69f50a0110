"""The HF generator on the tiny model: continuous batching, UTF-8-safe streaming, stop strings,
cancellation, the bounded queue, context truncation, per-row adapters and adapter validation."""

from __future__ import annotations

import gc
import json
import pickle
import shutil
import threading
import time

import pytest
import torch
from transformers import AutoTokenizer

from bot.runtime.detokenizer import Detokenizer
from bot.runtime.hf_generator import HFGenerator
from bot.runtime.kv_cache import kv_from_bytes
from bot.runtime.types import AdapterError, Busy, GenerationRequest, GenerationResult
from tests.support.common import wait_until
from trainer.config import LoraSettings, SFTSettings
from trainer.sft import train_sft

RECORDS = [
    {
        "prompt": [{"role": "user", "content": "When is check-in?"}],
        "completion": [{"role": "assistant", "content": "From 3:30pm."}],
    }
]
QUESTIONS = [
    "When is check-in?",
    "Is parking free at the hotel?",
    "hello",
    "Do you allow pets in the rooms, and is there an extra fee for a dog?",
    "Breakfast?",
    "Can I book a taxi to the train station tomorrow morning at seven?",
]


def _request(text: str, version: str = "base", **kwargs) -> GenerationRequest:
    return GenerationRequest(
        [{"role": "user", "content": text}], adapter_version=version, **{"max_new_tokens": 12, **kwargs}
    )


def run(generator, request: GenerationRequest, cancel: threading.Event | None = None):
    pieces: list[str] = []
    result = generator.submit(request, pieces.append, cancel or threading.Event()).result(timeout=60)
    return result, pieces


@pytest.fixture(scope="module")
def generator(tiny_model):
    generator = HFGenerator(tiny_model, device="cpu", max_batch=4, max_queue=8)
    generator.load()
    yield generator
    generator.close()


@pytest.fixture(scope="module")
def adapter(tiny_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("adapter")
    train_sft(
        RECORDS,
        base_model=tiny_model,
        out_dir=folder,
        device="cpu",
        lora=LoraSettings(r=4, alpha=8),
        sft=SFTSettings(epochs=1, min_steps=2, batch_size=1, learning_rate=1e-2),
        log=lambda _l: None,
        progress=False,
    )
    return folder


def test_decoder_emits_only_complete_characters(tiny_model):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    text = "Prix: 5 € — café ☕ 😀 ok"
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert any("\ufffd" in tokenizer.decode([i]) for i in ids)  # some tokens split characters
    decoder = Detokenizer(tokenizer)
    pieces = [decoder.add(token) for token in ids] + [decoder.finish()]
    assert "".join(pieces) == text and not any("\ufffd" in p for p in pieces)


def test_decoder_cuts_at_stop_string_and_never_leaks_its_start(tiny_model):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    decoder = Detokenizer(tokenizer, stops=("END",))
    pieces = []
    for token in tokenizer.encode("Check-in at 3pm. EN", add_special_tokens=False):
        pieces.append(decoder.add(token))
    assert not "".join(pieces).endswith("EN")  # held back: it may become the stop string
    for token in tokenizer.encode("D more", add_special_tokens=False):
        pieces.append(decoder.add(token))
    pieces.append(decoder.finish())
    assert decoder.stopped and "".join(pieces) == "Check-in at 3pm. "


def test_long_history_is_truncated_oldest_first_keeping_system(generator):
    system = {"role": "system", "content": "SYSTEM-PROMPT"}
    turns = [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i} " + "words " * 20} for i in range(40)
    ]
    turns.append({"role": "user", "content": "last question"})
    ids, shared = generator.encode([system] + turns, max_new_tokens=64)
    assert "SYSTEM-PROMPT" in generator.tokenizer.decode(ids[:shared])  # still the shared, cacheable prefix
    assert len(ids) <= generator.context_window - 64
    text = generator.tokenizer.decode(ids)
    assert text.count("SYSTEM-PROMPT") == 1 and "last question" in text and "turn 0 " not in text


def test_generate_streams_and_counts_tokens(generator):
    result, pieces = run(generator, _request("hello", max_new_tokens=6))
    assert result.adapter_version == "base" and 1 <= result.completion_tokens <= 6
    assert "".join(pieces).strip() == result.text


def test_batched_greedy_output_equals_running_alone(generator):
    alone = [run(generator, _request(q))[0].text for q in QUESTIONS]
    futures, pieces = [], [[] for _ in QUESTIONS]
    for i, question in enumerate(QUESTIONS):  # staggered: requests join a batch already running
        futures.append(generator.submit(_request(question), pieces[i].append, threading.Event()))
        time.sleep(0.01 * (i % 3))
    batched = [f.result(timeout=60).text for f in futures]
    assert batched == alone
    assert ["".join(p).strip() for p in pieces] == alone


def test_chunked_prefill_and_small_batches_give_the_same_answers(tiny_model, generator):
    alone = [run(generator, _request(q))[0].text for q in QUESTIONS]
    small = HFGenerator(tiny_model, device="cpu", max_batch=2, prefill_chunk=3)
    small.load()
    try:
        futures = [small.submit(_request(q), lambda _t: None, threading.Event()) for q in QUESTIONS]
        assert [f.result(timeout=60).text for f in futures] == alone
        assert small.scheduler.steps > max(len(small.encode(_request(q).messages, 12)[0]) for q in QUESTIONS) // 3
    finally:
        small.close()


def _prefill_then_resume(prefiller: HFGenerator, decoder: HFGenerator, request: GenerationRequest):
    pieces: list[str] = []
    first = prefiller.submit(request, pieces.append, threading.Event(), prefill_only=True).result(timeout=60)
    if isinstance(first, GenerationResult):  # finished at its first token: nothing to hand off
        return first, pieces
    handoff = pickle.loads(pickle.dumps(first))  # as it crosses between processes
    return decoder.resume(request, handoff, pieces.append, threading.Event()).result(timeout=60), pieces


def test_prefill_in_one_generator_and_decode_in_another_gives_the_same_answers(tiny_model, generator):
    system = {"role": "system", "content": "You are a concise support assistant for hotels."}
    requests = [_request(q) for q in QUESTIONS] + [_request(QUESTIONS[0], max_new_tokens=1)]
    requests += [GenerationRequest([system, {"role": "user", "content": q}], max_new_tokens=10) for q in QUESTIONS[:2]]
    # the tiny model answers with newlines: a stop string of two is held back at the first, across the handoff
    requests += [_request(q, stop=("\n\n",)) for q in QUESTIONS[:2]] + [_request(QUESTIONS[2], stop=("\n\n\n\n",))]
    alone = [run(generator, r) for r in requests]
    decoder = HFGenerator(tiny_model, device="cpu", max_batch=4)
    decoder.load()
    try:
        split = [_prefill_then_resume(generator, decoder, r) for r in requests]
    finally:
        decoder.close()
    assert [r.text for r, _ in split] == [r.text for r, _ in alone]
    assert [r.completion_tokens for r, _ in split] == [r.completion_tokens for r, _ in alone]
    assert [r.finish_reason for r, _ in split] == [r.finish_reason for r, _ in alone]
    assert ["".join(p) for _, p in split] == ["".join(p) for _, p in alone]  # the same stream of text
    assert [r.completion_tokens for r, _ in split[-3:]] == [2, 2, 4]  # stopped after the handoff


def _jobs_alive() -> int:
    from bot.runtime.types import Job

    return sum(isinstance(o, Job) for o in gc.get_objects())


def test_finished_requests_leave_nothing_behind_for_the_garbage_collector(tiny_model, generator):
    """A finished request is freed as soon as nobody holds its result: no reference cycle keeps its job,
    and with it a handoff's KV (megabytes on the real model), until a full collection happens to run.
    (It did: a job's future kept a callback that closed over the job; the soak's model workers grew by
    a gigabyte of handed-off KV in 3 minutes, bench/soak.py.)"""
    decoder = HFGenerator(tiny_model, device="cpu", max_batch=4)
    decoder.load()
    gc.collect()
    gc.disable()
    try:
        results = [_prefill_then_resume(generator, decoder, _request(q)) for q in QUESTIONS]  # submit and resume
        results += [run(generator, _request(q)) for q in QUESTIONS[:2]]  # plain answers
        assert all(r.completion_tokens for r, _ in results)
        del results
        wait_until(lambda: _jobs_alive() == 0, timeout=10)
    finally:
        gc.enable()
        decoder.close()


def test_a_handoff_carries_the_prompts_kv(tiny_model, generator):
    from transformers import AutoModelForCausalLM

    from bot.runtime.prepacked_linear import prepack_linears

    request = GenerationRequest([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Parking?"}])
    handoff = generator.submit(request, lambda _t: None, threading.Event(), prefill_only=True).result(timeout=60)
    prompt = generator.encode(request.messages, request.max_new_tokens)[0]
    assert handoff.prompt == prompt and handoff.max_new_tokens == request.max_new_tokens
    reference = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    prepack_linears(reference)  # the same Linear kernels as the generator's, in transformers' own forward
    with torch.inference_mode():
        expected = reference(input_ids=torch.tensor([prompt]), use_cache=True).past_key_values
    kv = kv_from_bytes(*handoff.kv, "cpu")
    assert len(kv) == len(expected.layers)
    for (keys, values), layer in zip(kv, expected.layers):  # (kv heads, tokens, dim) per layer
        assert torch.allclose(keys, layer.keys[0], atol=1e-4) and torch.allclose(values, layer.values[0], atol=1e-4)


def test_cancel_frees_the_slot_at_the_next_step(generator):
    cancel = threading.Event()
    started = threading.Event()
    future = generator.submit(_request("hello", max_new_tokens=500), lambda _t: started.set(), cancel)
    assert started.wait(30)
    cancel.set()
    assert future.result(timeout=30).completion_tokens < 200
    wait_until(lambda: not generator.scheduler.rows, timeout=10)
    assert not generator.cache.order and not generator.cache.slot_of  # its KV slot was freed


def test_full_queue_answers_busy(tiny_model):
    generator = HFGenerator(tiny_model, device="cpu", max_batch=1, max_queue=1)
    generator.load()
    try:
        started = threading.Event()
        cancel = threading.Event()
        first = generator.submit(_request("a", max_new_tokens=500), lambda _t: started.set(), cancel)
        assert started.wait(30)  # admitted: the batch (1 row) is full
        second = generator.submit(_request("b", max_new_tokens=2), lambda _t: None, threading.Event())
        with pytest.raises(Busy, match="capacity"):
            generator.submit(_request("c"), lambda _t: None, threading.Event())
        cancel.set()
        assert first.result(timeout=30).completion_tokens < 200 and second.result(timeout=30).completion_tokens >= 1
    finally:
        generator.close()


def test_an_adapter_is_validated_while_the_batch_is_full(tiny_model, adapter):
    """The probe prompt joins the running batch at once: it does not wait for a slot or the queue."""
    generator = HFGenerator(tiny_model, device="cpu", max_batch=1, max_queue=1)
    generator.load()
    try:
        started, cancel = threading.Event(), threading.Event()

        def slowly(_text: str) -> None:  # ≥ 20 ms a step: the long answer lasts seconds
            started.set()
            time.sleep(0.02)

        first = generator.submit(_request("a", max_new_tokens=1000), slowly, cancel)
        assert started.wait(30)
        queued = generator.submit(_request("b", max_new_tokens=2), lambda _t: None, threading.Event())
        generator.load_adapter("v1", adapter)  # the probe ran beside the long answer
        assert not first.done() and not queued.done() and "v1" in generator.adapters
        cancel.set()
        assert queued.result(timeout=30).completion_tokens >= 1
    finally:
        generator.close()


def _last_logits(generator: HFGenerator, version: str = "base") -> torch.Tensor:
    prompt, _ = generator.encode([{"role": "user", "content": "When is check-in?"}], 8)
    return generator.scheduler.call(lambda: generator.logits_for(prompt, version)).result()


def test_system_prompt_kv_is_reused_without_changing_answers(generator):
    system = {"role": "system", "content": "You are a concise support assistant for hotels."}
    requests = [GenerationRequest([system, {"role": "user", "content": q}], max_new_tokens=10) for q in QUESTIONS]
    generator.scheduler.call(generator.prefixes.entries.clear).result()
    first = [run(generator, r)[0].text for r in requests]  # the first one stores the prefix
    assert len(generator.prefixes.entries) == 1
    futures = [generator.submit(r, lambda _t: None, threading.Event()) for r in requests]  # all hits, batched
    assert [f.result(timeout=60).text for f in futures] == first
    ids, shared = generator.encode(requests[0].messages, 10)
    assert 0 < shared < len(ids) and generator.tokenizer.decode(ids[:shared]).count("concise support") == 1


def test_adapter_rows_and_base_rows_share_a_batch(generator, adapter):
    base_before = _last_logits(generator)
    generator.load_adapter("v1-good", adapter)
    try:
        assert not torch.allclose(_last_logits(generator, "v1-good"), base_before)
        assert torch.allclose(_last_logits(generator), base_before, atol=1e-5)
        requests = [_request(q, version=v) for q in QUESTIONS[:3] for v in ("base", "v1-good")]
        alone = [run(generator, r)[0].text for r in requests]
        futures = [generator.submit(r, lambda _t: None, threading.Event()) for r in requests]
        assert [f.result(timeout=60).text for f in futures] == alone
    finally:
        generator.unload_adapter("v1-good")
    assert "v1-good" not in generator.adapters and generator.peft is None
    assert torch.allclose(_last_logits(generator), base_before, atol=1e-5)


def _broken_copy(adapter, tmp_path, how: str):
    broken = tmp_path / how
    shutil.copytree(adapter, broken)
    weights = broken / "adapter_model.safetensors"
    config = json.loads((broken / "adapter_config.json").read_text())
    if how == "truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif how == "foreign-modules":
        config["target_modules"] = ["no_such_projection"]
    elif how == "wrong-shapes":
        config["r"] = 8
    elif how == "foreign-base":  # a supportloop manifest saying it was trained on another base model
        (broken / "manifest.json").write_text(json.dumps({"base_model": {"id": "OtherModel@0123456789abcdef"}}))
    elif how == "unreadable-manifest":
        (broken / "manifest.json").write_text("{not json")
    (broken / "adapter_config.json").write_text(json.dumps(config))
    return broken


@pytest.mark.parametrize("first", [True, False], ids=["as-first-adapter", "beside-a-live-adapter"])
@pytest.mark.parametrize("how", ["truncated", "foreign-modules", "wrong-shapes", "foreign-base", "unreadable-manifest"])
def test_broken_adapter_is_refused_and_leaves_no_trace(tiny_model, adapter, tmp_path, how, first):
    from peft.tuners.tuners_utils import BaseTunerLayer

    generator = HFGenerator(tiny_model, device="cpu")
    generator.load()
    try:
        live_version = "base" if first else "v1-live"
        if not first:
            generator.load_adapter("v1-live", adapter)
        live = _last_logits(generator, live_version)
        reasons = {"foreign-base": "made for base model OtherModel@", "unreadable-manifest": "unreadable manifest"}
        with pytest.raises(AdapterError, match="v9-bad.*" + reasons.get(how, "")):
            generator.load_adapter("v9-bad", _broken_copy(adapter, tmp_path, how))
        assert "v9-bad" not in generator.adapters
        assert torch.allclose(_last_logits(generator, live_version), live, atol=1e-5)
        if first:
            assert not any(isinstance(m, BaseTunerLayer) for m in generator.model.modules())
        else:
            assert "v9-bad" not in generator.peft.peft_config
    finally:
        generator.close()


def test_the_model_leaves_a_core_to_the_event_loop():
    import os

    from bot.runtime.generator import model_threads

    assert model_threads(3) == 3
    assert model_threads(0) == max(1, (os.cpu_count() or 2) - 1)


def test_lean_forward_gives_the_transformers_forward_logits(tiny_model, generator, adapter):
    hf = HFGenerator(tiny_model, device="cpu", lean_forward=False)
    hf.load()
    try:
        assert generator.lean is not None and hf.lean is None
        for version in ("base", "v1-good"):
            for g in (generator, hf):
                if version != "base":
                    g.load_adapter(version, adapter)
            lean, reference = _last_logits(generator, version), _last_logits(hf, version)
            assert torch.allclose(lean, reference, atol=1e-4), (lean - reference).abs().max()
        requests = [_request(q, version=v) for q in QUESTIONS[:3] for v in ("base", "v1-good")]
        assert [run(generator, r)[0].text for r in requests] == [run(hf, r)[0].text for r in requests]
    finally:
        generator.unload_adapter("v1-good")
        hf.close()
