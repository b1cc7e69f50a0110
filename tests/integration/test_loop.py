"""The whole loop on the real SmolLM2-135M-Instruct: a customer asks over a real websocket on a real
port, staff approve a correction, `supportloop train` runs, the server swaps to the new adapter without
a restart, and the same question now gets an answer measurably closer to the correction."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pytest

from bot.runtime.base_model import pull_default_model
from bot.server.app import create_app
from bot.server.settings import Settings
from tests.support.common import FAQ, ask_over_websocket, wait_until
from tests.support.services import LiveServer
from trainer.metrics import overlap_f1

pytestmark = pytest.mark.integration
CLI = str(Path(sys.executable).parent / "supportloop")


def _faq_pair(row_id: str) -> tuple[str, str]:
    if not FAQ.is_file():
        pytest.skip(f"the DSTC9 FAQ data is not at {FAQ}")
    with FAQ.open() as rows:
        row = next(r for r in map(json.loads, rows) if r["id"] == row_id)
    return f"What time is check-in at {row['entity_name'].title()}?", row["answer"]


def _cli(env: dict, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([CLI, *args], env=env, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_correction_is_learned_and_served_after_swap(tmp_path):
    question, correction = _faq_pair("hotel-0-3")
    cache = Settings().model_cache
    pull_default_model(cache, progress=False)
    env = {**os.environ, "SUPPORTLOOP_DATA_DIR": str(tmp_path / "data"), "SUPPORTLOOP_MODEL_CACHE": str(cache)}
    settings = Settings(
        data_dir=tmp_path / "data", model_cache=cache, adapter_poll_seconds=0.5, max_new_tokens=48, memory=False
    )  # the adapter alone: the correction memory would answer from the correction before any training
    with LiveServer(create_app(settings)) as server:
        ws_url = server.url.replace("http", "ws") + "/ws/chat"
        before = ask_over_websocket(ws_url, question)
        assert before["adapter_version"] == "base" and before["text"]

        token = _cli(env, "staff", "add", "alice").stdout.strip().splitlines()[-1]
        approved = httpx.post(
            f"{server.url}/api/messages/{before['message_id']}/corrections",
            json={"text": correction, "approve": True},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert approved.status_code == 201, approved.text

        trained = _cli(env, "train", "--quiet")
        version = trained.stdout.split("new adapter ")[1].split()[0]
        print(trained.stdout)
        wait_until(
            lambda: httpx.get(server.url + "/readyz").json()["adapter_version"] == version, timeout=120, interval=0.5
        )
        after = ask_over_websocket(ws_url, question)
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
        streamed = client.chat.completions.create(
            model="supportloop", stream=True, messages=[{"role": "user", "content": question}]
        )
        via_openai = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)

    score_before, score_after = overlap_f1(before["text"], correction), overlap_f1(after["text"], correction)
    print(
        f"\ncorrection: {correction!r}\nbefore ({before['adapter_version']}, overlap {score_before:.2f}): "
        f"{before['text']!r}\nafter  ({after['adapter_version']}, overlap {score_after:.2f}): {after['text']!r}"
    )
    assert after["adapter_version"] == version
    print(f"openai client, streamed: {via_openai!r}")
    assert overlap_f1(via_openai, correction) >= score_before + 0.3  # the same model, via the OpenAI API
    assert score_after >= score_before + 0.3 and score_after >= 0.6
