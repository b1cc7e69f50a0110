"""The model in its own process (`bot.runtime.workers.ProcessGenerator`), on the tiny model, with and without the
prefill worker: the same answers as in-process, streaming, cancellation across the pipes, 'busy', adapters
refused with their reason, and a worker that dies fails the requests in flight and says so in /readyz."""

from __future__ import annotations

import os
import signal
import threading

import pytest
from fastapi.testclient import TestClient

from bot.runtime.hf_generator import HFGenerator
from bot.runtime.types import AdapterError, Busy, ModelUnavailable
from bot.runtime.workers import ProcessGenerator
from bot.server.app import create_app
from tests.bot.runtime.test_hf_generator import QUESTIONS, RECORDS, _request, run
from tests.support.common import wait_until
from trainer.config import LoraSettings, SFTSettings
from trainer.sft import train_sft


@pytest.fixture(scope="module", params=[None, False], ids=["prefill-worker", "one-worker"])
def worker(tiny_model, request):
    generator = ProcessGenerator(tiny_model, device="cpu", max_batch=4, max_queue=2, prefill_process=request.param)
    generator.load()
    yield generator
    generator.close()


def test_answers_equal_the_in_process_generator_batched_and_streamed(tiny_model, worker):
    local = HFGenerator(tiny_model, device="cpu")
    local.load()
    try:
        expected = [run(local, _request(q))[0].text for q in QUESTIONS]
    finally:
        local.close()
    pieces = [[] for _ in QUESTIONS]
    futures = [worker.submit(_request(q), pieces[i].append, threading.Event()) for i, q in enumerate(QUESTIONS)]
    results = [f.result(timeout=60) for f in futures]
    assert [r.text for r in results] == expected
    assert ["".join(p).strip() for p in pieces] == expected
    assert all(r.completion_tokens >= 1 and r.prompt_tokens > 0 for r in results)
    stats = worker.stats()
    assert stats["steps"] > 0 and stats["step_rows"] >= stats["steps"]
    if worker._prefiller is not None:  # the first request starts in the idle decode worker; the others,
        # submitted while it is busy, are prefilled by the prefill worker and handed over
        assert worker._decoder.stats["prefill_tokens"] == results[0].prompt_tokens
        assert worker._prefiller.stats["prefill_tokens"] == sum(r.prompt_tokens for r in results[1:])
        assert stats["prefill_steps"] > 0 and stats["prefill_tokens"] == sum(r.prompt_tokens for r in results)


def test_cancel_crosses_the_pipe_and_frees_the_slot(worker):
    cancel, started = threading.Event(), threading.Event()
    future = worker.submit(_request("hello", max_new_tokens=2000), lambda _t: started.set(), cancel)
    assert started.wait(30)
    cancel.set()
    result = future.result(timeout=30)
    assert result.finish_reason == "cancelled" and result.completion_tokens < 2000
    wait_until(lambda: worker.stats()["batch_size"] == 0, timeout=10)


def test_more_requests_than_batch_and_queue_answer_busy(worker):
    cancel = threading.Event()
    futures = [worker.submit(_request(f"q{i}", max_new_tokens=2000), lambda _t: None, cancel) for i in range(6)]
    with pytest.raises(Busy, match="capacity"):
        worker.submit(_request("one too many"), lambda _t: None, threading.Event())
    cancel.set()
    assert all(f.result(timeout=60).finish_reason == "cancelled" for f in futures)
    assert run(worker, _request("hello"))[0].completion_tokens >= 1  # serving again


def test_adapters_load_and_a_broken_one_is_refused_with_its_reason(worker, tiny_model, tmp_path):
    good = tmp_path / "good"
    train_sft(
        RECORDS,
        base_model=tiny_model,
        out_dir=good,
        device="cpu",
        lora=LoraSettings(r=4, alpha=8),
        sft=SFTSettings(epochs=1, min_steps=2, batch_size=1, learning_rate=1e-2),
        log=lambda _l: None,
        progress=False,
    )
    worker.load_adapter("v1", good)
    assert run(worker, _request("When is check-in?", version="v1"))[0].adapter_version == "v1"
    with pytest.raises(AdapterError, match="v2.*failed to load"):
        worker.load_adapter("v2", tmp_path / "missing")
    with pytest.raises(AdapterError, match="not loaded"):
        run(worker, _request("hello", version="v2"))
    worker.unload_adapter("v1")
    with pytest.raises(AdapterError, match="not loaded"):
        run(worker, _request("hello", version="v1"))


@pytest.mark.parametrize("role", ["decode", "prefill"])
def test_a_dead_worker_fails_requests_in_flight_and_readyz_says_why(tiny_model, settings, role):
    generator = ProcessGenerator(tiny_model, device="cpu")
    with TestClient(create_app(settings, generator=generator)) as client:
        wait_until(lambda: client.get("/readyz").status_code == 200, timeout=120)
        future = generator.submit(_request("hello", max_new_tokens=5000), lambda _t: None, threading.Event())
        worker = {"decode": generator._decoder, "prefill": generator._prefiller}[role]
        os.kill(worker.process.pid, signal.SIGKILL)
        with pytest.raises(ModelUnavailable, match=f"model worker stopped \\({role}"):
            future.result(timeout=30)
        ready = client.get("/readyz")
        assert ready.status_code == 503 and "model worker stopped" in ready.json()["detail"]
        reply = client.post("/api/chat", json={"message": "hello"})
        assert reply.status_code == 503 and "unavailable" in reply.json()["detail"]
        with client.websocket_connect("/ws/chat") as ws:
            ws.send_json({"type": "user_message", "text": "hello"})
            frames = [ws.receive_json() for _ in range(2)]
        assert [f["type"] for f in frames] == ["session", "error"] and frames[1]["code"] == "model_unavailable"


def test_a_model_that_cannot_load_is_reported(tmp_path):
    generator = ProcessGenerator(tmp_path / "no-such-model", device="cpu")
    with pytest.raises(RuntimeError, match="failed to load the model"):
        generator.load()
    generator.close()
