"""A canary on the real SmolLM2 served over a real port: half of the new sessions get a LoRA adapter
(random weights, made for this base model), each keeps its version, and once its answers are thumbed
down far more often than the active version's, the server rolls it back by itself."""

from __future__ import annotations

import json

import httpx
import pytest
from sqlmodel import select

from bot.runtime.base_model import base_model_id, pull_default_model
from bot.server.app import create_app
from bot.server.settings import Settings
from feedback import repo
from feedback.db import open_store
from feedback.models import Canary, StaffRole
from tests.support.common import wait_until
from tests.support.services import LiveServer

pytestmark = pytest.mark.integration


def _random_adapter(base, folder) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    model.save_pretrained(folder)
    (folder / "manifest.json").write_text(json.dumps({"base_model": {"id": base_model_id(base)}}))


def _ask(url: str, session: dict | None = None) -> dict:
    """An answer in `session` (an earlier answer of it), else in a new session; with the session's secret."""
    body = {"message": "Can I park my car at the hotel?", "session_id": session and session["session_id"]}
    secret = session["session_token"] if session else ""
    reply = httpx.post(f"{url}/api/chat", json=body, headers={"X-Session-Token": secret}, timeout=120)
    assert reply.status_code == 200 and reply.json()["reply"], reply.text
    return {**reply.json(), "session_token": reply.json()["session_token"] or secret}


def test_a_worse_canary_on_the_real_model_is_rolled_back(tmp_path):
    cache = Settings().model_cache
    base = pull_default_model(cache, progress=False)
    settings = Settings(
        data_dir=tmp_path / "data",
        model_cache=cache,
        adapter_poll_seconds=0.3,
        max_new_tokens=6,
        rate_limit="10000/minute",
    )
    _random_adapter(base, settings.adapters_dir / "v1")
    store = open_store(settings.db_url)
    with store.session() as s:
        repo.register_adapter(
            s,
            version="v1",
            path=str(settings.adapters_dir / "v1"),
            base_model=base_model_id(base),
            parent=None,
            dataset_hash=None,
            metrics={},
            activate=False,
        )
        _, token = repo.create_staff(s, name="ada", role=StaffRole.admin)
    store.dispose()
    admin = {"Authorization": f"Bearer {token}"}
    with LiveServer(create_app(settings)) as server:
        started = httpx.post(
            f"{server.url}/api/admin/adapters/v1/canary", json={"percent": 50}, headers=admin, timeout=120
        )
        assert started.status_code == 200, started.text
        answers: dict[str, list[dict]] = {"v1": [], "base": []}
        while min(len(a) for a in answers.values()) < 20:  # new sessions until each side can be judged
            answer = _ask(server.url)
            answers[answer["adapter_version"]].append(answer)
            assert len(answers["v1"]) + len(answers["base"]) < 150
        for version, given in answers.items():  # a session keeps its version
            assert {_ask(server.url, a)["adapter_version"] for a in given[:3]} == {version}
        for version, thumb in (("v1", "down"), ("base", "up")):
            for answer in answers[version][:20]:
                mine = {"X-Session-Token": answer["session_token"]}
                vote = httpx.post(
                    f"{server.url}/api/messages/{answer['message_id']}/feedback", json={"thumb": thumb}, headers=mine
                )
                assert vote.status_code == 200, vote.text
        wait_until(
            lambda: httpx.get(f"{server.url}/api/admin/adapters", headers=admin).json()["canary"] is None, timeout=30
        )
        assert _ask(server.url)["adapter_version"] == "base"
        assert "supportloop_canary_rollbacks_total 1.0" in httpx.get(server.url + "/metrics").text
    store = open_store(settings.db_url)
    with store.session() as s:
        ended = repo.list_actions(s)  # the staff action that started it, and the store's own record
        canary = s.exec(select(Canary)).one()
    store.dispose()
    assert [a.action for a in ended] == ["adapter.canary"]
    assert (canary.outcome, canary.ended_by) == ("rolled back", "auto-rollback")
    assert json.loads(canary.detail_json)["canary_down"] == 20
