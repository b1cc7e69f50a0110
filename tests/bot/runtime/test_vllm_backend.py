"""The vLLM backend (issue 22) against a fake vLLM OpenAI-compatible server on a real port
(`tests/support/fake_vllm.py`): streaming with the version as `model`, adapters loaded and probed under
their version names, refusals that leave the old version serving, unloading only when drained,
cancellation, capacity, and an unreachable or unhealthy vLLM (503 and `model_unavailable`, never a 500)."""

from __future__ import annotations

import threading
import time

import pytest
from fastapi.testclient import TestClient

from bot.runtime.types import AdapterError, Busy, GenerationRequest, ModelUnavailable
from bot.runtime.vllm_backend import VLLMGenerator
from bot.server.app import create_app
from tests.support.common import wait_until
from tests.support.fake_vllm import FakeVLLM
from tests.support.services import LiveServer, free_port

ASK = [{"role": "user", "content": "When is check-in?"}]


@pytest.fixture
def vllm():
    fake = FakeVLLM(delay=0.01)
    with LiveServer(fake.app) as server:
        fake.url = server.url
        yield fake


@pytest.fixture
def generator(vllm):
    generator = VLLMGenerator(vllm.url, max_requests=4)
    generator.load()
    yield generator
    generator.close()


def _ask(generator, version: str = "base", cancel: threading.Event | None = None):
    pieces: list[str] = []
    future = generator.submit(
        GenerationRequest(ASK, adapter_version=version), pieces.append, cancel or threading.Event()
    )
    return future, pieces


def test_an_answer_streams_through_vllm_with_the_base_model_named(vllm, generator):
    future, pieces = _ask(generator)
    result = future.result(timeout=10)
    assert result.text == "answer from base-model ." and "".join(pieces) == "answer from base-model ."
    assert (result.adapter_version, result.prompt_tokens, result.completion_tokens) == ("base", 7, 2)
    body = [b for _, kind, b in vllm.calls if kind == "chat"][-1]
    assert body["model"] == "base-model" and body["stream"] and body["messages"] == ASK
    with pytest.raises(AdapterError, match="not loaded"):
        _ask(generator, "v9-never-loaded")


def test_a_version_is_loaded_under_its_name_probed_then_routed_to(vllm, generator, tmp_path):
    generator.load_adapter("v2-abc", tmp_path / "v2-abc")
    load, probe = [(kind, body) for _, kind, body in vllm.calls][-2:]
    assert load == ("load", {"lora_name": "v2-abc", "lora_path": str(tmp_path / "v2-abc")})
    assert probe[0] == "chat" and probe[1]["model"] == "v2-abc" and not probe[1].get("stream")  # before serving
    assert _ask(generator, "v2-abc")[0].result(timeout=10).text == "answer from v2-abc ."
    assert _ask(generator)[0].result(timeout=10).text == "answer from base-model ."  # side by side


@pytest.mark.parametrize("folder, why", [("broken", "vLLM refused adapter"), ("mute", "failed its probe")])
def test_an_adapter_vllm_refuses_or_that_fails_its_probe_leaves_the_old_version_serving(
    vllm, generator, tmp_path, folder, why
):
    generator.load_adapter("v1-good", tmp_path / "v1-good")
    with pytest.raises(AdapterError, match=why):
        generator.load_adapter("v2-bad", tmp_path / folder)
    assert "v2-bad" not in vllm.loras and generator.adapters == {"v1-good"}  # a probe failure is unloaded again
    assert _ask(generator, "v1-good")[0].result(timeout=10).text == "answer from v1-good ."
    with pytest.raises(AdapterError):
        _ask(generator, "v2-bad")


def test_a_retired_version_is_unloaded_only_after_its_answers_finish_on_it(vllm, generator, tmp_path):
    vllm.words, vllm.delay = 30, 0.02  # an answer of ~0.6 s
    generator.load_adapter("v1-old", tmp_path / "v1-old")
    future, pieces = _ask(generator, "v1-old")
    wait_until(lambda: pieces)  # streaming
    unloading = threading.Thread(target=generator.unload_adapter, args=("v1-old",))
    unloading.start()
    wait_until(lambda: "v1-old" not in generator.adapters)
    with pytest.raises(AdapterError):  # new requests are refused at once...
        _ask(generator, "v1-old")
    result = future.result(timeout=10)  # ...the one streaming finishes on its version
    unloading.join(timeout=10)
    assert result.text.startswith("answer from v1-old") and result.completion_tokens == 32
    done_at = next(at for at, model, how in vllm.finished if model == "v1-old" and how == "done")
    unload_at = next(at for at, kind, body in vllm.calls if kind == "unload")
    assert unload_at >= done_at and "v1-old" not in vllm.loras


def test_versions_are_loaded_by_their_never_reused_names_so_a_reload_cannot_serve_stale_weights(
    vllm, generator, tmp_path
):
    """vLLM kept serving old weights after an adapter was reloaded under the same name (vllm #30931,
    #42125). supportloop never gives a name to other weights: a version's name is its registry folder, which
    never changes. A rollback loads the old version again under its own name and folder, and a version vLLM
    still holds (this server restarted) is accepted as it is: the same weights."""
    for version in ("v1-a", "v2-b"):
        generator.load_adapter(version, tmp_path / version)
    generator.unload_adapter("v1-a")
    generator.load_adapter("v1-a", tmp_path / "v1-a")  # a rollback
    restarted = VLLMGenerator(vllm.url)
    restarted.load()
    restarted.load_adapter("v2-b", tmp_path / "v2-b")  # vLLM: "already been loaded"
    loads = [(body["lora_name"], body["lora_path"]) for _, kind, body in vllm.calls if kind == "load"]
    assert {name: {path for n, path in loads if n == name} for name, _ in loads} == {
        "v1-a": {str(tmp_path / "v1-a")},
        "v2-b": {str(tmp_path / "v2-b")},
    }
    assert _ask(restarted, "v2-b")[0].result(timeout=10).text == "answer from v2-b ."
    restarted.close()


def test_cancelling_closes_the_stream_and_capacity_is_enforced(vllm, tmp_path):
    vllm.words, vllm.delay = 200, 0.02
    generator = VLLMGenerator(vllm.url, max_requests=1)
    generator.load()
    try:
        cancel = threading.Event()
        future, pieces = _ask(generator, cancel=cancel)
        wait_until(lambda: pieces)
        with pytest.raises(Busy):
            _ask(generator)
        cancel.set()
        result = future.result(timeout=10)
        assert result.finish_reason == "cancelled" and result.completion_tokens < 100
        wait_until(lambda: ("base-model", "disconnected") in [(m, how) for _, m, how in vllm.finished])
        wait_until(lambda: generator.stats()["batch_size"] == 0)
        vllm.words = 0
        assert _ask(generator)[0].result(timeout=10).finish_reason == "stop"  # the slot is free again
    finally:
        generator.close()


def test_loading_waits_for_vllm_to_come_up_then_fails_with_the_reason(vllm):
    port = free_port()
    generator = VLLMGenerator(f"http://127.0.0.1:{port}", start_timeout=0.5)
    with pytest.raises(ModelUnavailable, match="cannot be reached"):
        generator.load()
    generator.close()
    late = VLLMGenerator(f"http://127.0.0.1:{port}", start_timeout=30)
    starting = threading.Thread(target=late.load)
    starting.start()  # vLLM is not there yet: it waits
    time.sleep(1.0)
    assert starting.is_alive()
    with LiveServer(vllm.app, port=port):
        starting.join(timeout=30)
        assert not starting.is_alive() and late.model == "base-model"
    late.close()


def test_while_vllm_is_down_readyz_says_why_and_chat_refuses_with_model_unavailable(vllm, settings, store):
    generator = VLLMGenerator(vllm.url)
    with TestClient(create_app(settings, generator=generator, store=store)) as client:
        wait_until(lambda: client.get("/readyz").status_code == 200)
        vllm.healthy = False
        generator.check_health()
        ready = client.get("/readyz")
        assert ready.status_code == 503 and "unhealthy" in ready.json()["detail"]
        refused = client.post("/api/chat", json={"message": "When is check-in?"})
        assert refused.status_code == 503 and "unavailable right now" in refused.json()["detail"]
        with client.websocket_connect("/ws/chat") as ws:
            ws.send_json({"type": "hello", "protocol": 2})
            ws.receive_json()  # the session
            ws.send_json({"type": "user_message", "text": "When is check-in?"})
            frame = ws.receive_json()
        assert frame["type"] == "error" and frame["code"] == "model_unavailable", frame
        vllm.healthy = True
        generator.check_health()
        assert client.get("/readyz").status_code == 200
        answered = client.post("/api/chat", json={"message": "When is check-in?"})
        assert answered.status_code == 200 and answered.json()["reply"] == "answer from base-model ."


def test_the_server_picks_the_vllm_backend_by_setting(vllm, settings, store):
    configured = settings.model_copy(update={"backend": "vllm", "vllm_url": vllm.url})
    with TestClient(create_app(configured, store=store)) as client:
        wait_until(lambda: client.get("/readyz").status_code == 200)
        assert client.post("/api/chat", json={"message": "Hi"}).json()["reply"] == "answer from base-model ."
    assert [body["model"] for _, kind, body in vllm.calls if kind == "chat"] == ["base-model"]
