"""Batching and the prefill handoff on the real SmolLM2-135M-Instruct: a greedy answer is the same
alone, in a batch, and prefilled by one generator and finished by another. The tiny model cannot show
this (its greedy answers are all newlines); SmolLM2's are real text, and on CPUs that compute the Linear
layers in bf16 its top two logits are often within one rounding step, so any batch-dependent rounding
(a lone row, the batch's attention width) shows up as a different answer."""

from __future__ import annotations

import json
import pickle
import threading

import pytest

from bot.runtime.base_model import pull_default_model
from bot.runtime.hf_generator import HFGenerator
from bot.runtime.types import GenerationRequest
from bot.server.settings import Settings
from tests.support.common import FAQ

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def requests() -> list[GenerationRequest]:
    if not FAQ.is_file():
        pytest.skip(f"the DSTC9 FAQ data is not at {FAQ}")
    rows = [json.loads(line) for line in FAQ.open()]
    system = {"role": "system", "content": Settings().system_prompt}
    return [
        GenerationRequest(
            [system, {"role": "user", "content": f"{r['entity_name'].title()}: {r['question']}"}], max_new_tokens=32
        )
        for r in rows[:: len(rows) // 8][:8]
    ]


@pytest.fixture(scope="module")
def generators():
    path = pull_default_model(Settings().model_cache, progress=False)
    pair = [HFGenerator(path, device="cpu", max_batch=8) for _ in range(2)]
    for generator in pair:
        generator.load()
    yield pair
    for generator in pair:
        generator.close()


def _texts(futures) -> list[str]:
    return [f.result(timeout=300).text for f in futures]


def test_answers_are_the_same_alone_batched_and_handed_over(requests, generators):
    first, second = generators
    alone = [_texts([first.submit(r, lambda _t: None, threading.Event())])[0] for r in requests]
    assert all(len(text) > 10 for text in alone)  # real answers, not empty ones
    batched = _texts([first.submit(r, lambda _t: None, threading.Event()) for r in requests])
    assert batched == alone
    handoffs = [
        first.submit(r, lambda _t: None, threading.Event(), prefill_only=True).result(timeout=300) for r in requests
    ]
    resumed = _texts(
        [
            second.resume(r, pickle.loads(pickle.dumps(h)), lambda _t: None, threading.Event())
            for r, h in zip(requests, handoffs)
        ]
    )
    assert resumed == alone
