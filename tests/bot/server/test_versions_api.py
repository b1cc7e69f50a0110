"""Adapter versions through the admin API, on a real SQLite file and the real PostgreSQL: list with live
stats, promote (validated before the store changes), rollback, `base` as a version, the history of who
did what, and bad input that changes nothing."""

from __future__ import annotations

import asyncio

import pytest
from fastapi.testclient import TestClient
from sqlmodel import select

from bot.runtime.adapter_manager import AdapterManager
from bot.runtime.bridge import GenerationBridge
from bot.server.app import create_app
from feedback import repo, versions
from feedback.models import AdapterActivation, Role, StaffRole, Thumb
from tests.support.common import wait_until
from tests.support.fakes import FakeGenerator


@pytest.fixture
def client(serve):
    with serve() as client:
        yield client


def _register(store, folder, version: str, *, valid: bool = True, rejected: bool = False) -> None:
    path = folder / version
    path.mkdir(parents=True)
    if valid:
        (path / "adapter_config.json").write_text("{}")
    with store.session() as s:
        repo.register_adapter(
            s,
            version=version,
            path=str(path),
            base_model="tiny",
            parent=None,
            dataset_hash=None,
            metrics={"gate": {"passed": not rejected}},
            activate=False,
            rejected=rejected,
        )


def _state(client, headers) -> tuple[str, str]:
    listed = client.get("/api/admin/adapters", headers=headers).json()
    return listed["active"], listed["serving"]


def test_promote_and_rollback_swap_at_once_and_keep_the_history(serve, admin, any_store, settings, fake):
    for version in ("v1", "v2"):
        _register(any_store, settings.adapters_dir, version)
    with serve(max_loaded_adapters=1) as client:  # one adapter loaded at most, besides the active one
        _promote_and_roll_back(client, admin, any_store, fake)


def _promote_and_roll_back(client, admin, any_store, fake) -> None:
    promoted = client.post("/api/admin/adapters/v1/promote", headers=admin["ada"])
    assert promoted.status_code == 200, promoted.text
    assert promoted.json() | {"created_at": None} == {
        "version": "v1",
        "previous": "base",
        "action": "promote",
        "actor": "ada",
        "forced": False,
        "created_at": None,
        "serving": "v1",
    }
    assert client.post("/api/chat", json={"message": "hi"}).json()["adapter_version"] == "v1"  # no poll needed
    client.post("/api/admin/adapters/v2/promote", headers=admin["ada"])
    assert _state(client, admin["ada"]) == ("v2", "v2")
    wait_until(lambda: list(fake.adapters) == ["v2"])  # v1 unloaded once drained, in the background
    back = client.post("/api/admin/adapters/rollback", headers=admin["ada"]).json()
    assert (back["version"], back["previous"], back["action"], back["serving"]) == ("v1", "v2", "rollback", "v1")
    assert client.post("/api/chat", json={"message": "hi"}).json()["adapter_version"] == "v1"
    wait_until(lambda: list(fake.adapters) == ["v1"])
    to_base = client.post("/api/admin/adapters/base/promote", headers=admin["ada"]).json()
    assert to_base["serving"] == "base" and list(fake.adapters) == ["v1"]  # kept loaded: within the cap
    with any_store.session() as s:
        history = [
            (a.version, a.previous, a.action) for a in s.exec(select(AdapterActivation).order_by(AdapterActivation.id))
        ]
        audit = [a.action for a in repo.list_actions(s)]
    assert history == [
        ("v1", "base", "promote"),
        ("v2", "v1", "promote"),
        ("v1", "v2", "rollback"),
        ("base", "v1", "promote"),
    ]
    assert audit.count("adapter.promote") == 3 and audit.count("adapter.rollback") == 1
    metrics = client.get("/metrics").text
    assert "supportloop_adapter_swaps_total 4.0" in metrics and "supportloop_adapter_swap_seconds_count 4.0" in metrics


def test_the_list_shows_metrics_and_live_stats_per_version(client, admin, any_store, settings):
    _register(any_store, settings.adapters_dir, "v1")
    with any_store.session() as s:
        conversation = repo.get_or_create_conversation(s, conversation_id=None, system_prompt="")
        for version, thumb in (("v1", Thumb.up), ("v1", Thumb.up), ("v1", Thumb.down), ("base", None)):
            message = repo.add_message(
                s, conversation_id=conversation.id, role=Role.assistant, text="a", adapter_version=version
            )
            if thumb is not None:
                repo.set_feedback(s, message_id=message.id, thumb=thumb)
    listed = {v["version"]: v for v in client.get("/api/admin/adapters", headers=admin["ada"]).json()["versions"]}
    assert listed["v1"]["live"] == {"messages": 3, "thumbs_up": 2, "thumbs_down": 1, "thumbs_up_rate": 0.6667}
    assert listed["v1"]["metrics"] == {"gate": {"passed": True}} and listed["v1"]["status"] == "candidate"
    assert listed["base"]["live"]["messages"] == 1 and listed["base"]["status"] == "active"


def test_bad_requests_change_nothing(client, admin, any_store, settings, fake):
    _register(any_store, settings.adapters_dir, "v1")
    _register(any_store, settings.adapters_dir, "v-gated", rejected=True)
    _register(any_store, settings.adapters_dir, "v-broken", valid=False)
    cases = [
        ("/api/admin/adapters/nope/promote", 404, "unknown adapter version"),
        ("/api/admin/adapters/base/promote", 409, "already the active version"),
        ("/api/admin/adapters/v-gated/promote", 409, "rejected by the evaluation gate"),
        ("/api/admin/adapters/v-broken/promote", 422, "adapter_config.json"),
        ("/api/admin/adapters/rollback", 409, "no previous version"),
    ]
    for url, status, reason in cases:
        reply = client.post(url, headers=admin["ada"])
        assert reply.status_code == status and reason in reply.json()["detail"], (url, reply.text)
    assert client.post("/api/admin/adapters/v1/promote", headers=admin["bob"]).status_code == 403  # agents cannot
    assert client.post("/api/admin/adapters/v1/promote").status_code == 401
    assert _state(client, admin["ada"]) == ("base", "base")
    assert "v-broken" not in fake.adapters and "v-gated" not in fake.adapters  # refused or never tried: no trace
    with any_store.session() as s:
        assert s.exec(select(AdapterActivation)).all() == []


def test_a_gate_rejected_version_is_served_only_when_forced_and_that_is_recorded(client, admin, any_store, settings):
    _register(any_store, settings.adapters_dir, "v-gated", rejected=True)
    forced = client.post("/api/admin/adapters/v-gated/promote", json={"force": True}, headers=admin["ada"]).json()
    assert forced["forced"] is True and forced["actor"] == "ada" and forced["serving"] == "v-gated"
    with any_store.session() as s:
        assert versions.active_version(s) == "v-gated"
        assert s.exec(select(AdapterActivation)).one().forced


def test_a_published_round_is_recorded_so_it_can_be_rolled_back(client, admin, any_store, settings):
    path = settings.adapters_dir / "v1"
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text("{}")
    with any_store.session() as s:
        repo.register_adapter(
            s,
            version="v1",
            path=str(path),
            base_model="tiny",
            parent=None,
            dataset_hash=None,
            metrics={},
            activate=True,
        )
    wait_until(lambda: _state(client, admin["ada"]) == ("v1", "v1"))  # the poll picks it up
    back = client.post("/api/admin/adapters/rollback", headers=admin["ada"]).json()
    assert (back["version"], back["previous"], back["serving"]) == ("base", "v1", "base")


def test_replicas_on_postgresql_follow_a_promotion_through_notify(settings, tmp_path):
    """Two servers on one PostgreSQL store, polling only every minute: a promotion on one (and one made
    with the CLI's store call) reaches the other through LISTEN/NOTIFY."""
    from feedback.db import open_store
    from tests.support.common import drop_postgres, postgres_url

    url = postgres_url()
    slow = settings.model_copy(update={"adapter_poll_seconds": 60.0})
    stores = [open_store(url), open_store(url)]
    try:
        for version in ("v1", "v2"):
            _register(stores[0], slow.adapters_dir, version)
        with stores[0].session() as s:
            _, token = repo.create_staff(s, name="ada", role=StaffRole.admin)
        headers = {"Authorization": f"Bearer {token}"}
        with (
            TestClient(create_app(slow, generator=FakeGenerator(), store=stores[0])) as one,
            TestClient(create_app(slow, generator=FakeGenerator(), store=stores[1])) as other,
        ):
            for client in (one, other):
                wait_until(lambda c=client: c.get("/readyz").status_code == 200)
            assert one.post("/api/admin/adapters/v1/promote", headers=headers).json()["serving"] == "v1"
            wait_until(lambda: other.app.state.adapters.active_version == "v1", timeout=10)
            with stores[1].session() as s:
                versions.promote(s, "v2", actor="cli")
            for client in (one, other):
                wait_until(lambda c=client: c.app.state.adapters.active_version == "v2", timeout=10)
            assert other.post("/api/chat", json={"message": "hi"}).json()["adapter_version"] == "v2"
    finally:
        for store in stores:
            store.dispose()
        drop_postgres(url)


def test_an_answer_keeps_the_version_it_started_on_across_a_promotion(client, admin, any_store, settings, fake):
    for version in ("v1", "v2"):
        _register(any_store, settings.adapters_dir, version)
    client.post("/api/admin/adapters/v1/promote", headers=admin["ada"])
    fake.delay = 0.02
    fake.enqueue(" ".join(f"word{i}" for i in range(60)), "short answer")
    with client.websocket_connect("/ws/chat") as ws:
        ws.send_json({"type": "user_message", "text": "a long question"})
        frames = [ws.receive_json(), ws.receive_json()]
        assert [f["type"] for f in frames] == ["session", "token"]  # streaming on v1
        assert client.post("/api/admin/adapters/v2/promote", headers=admin["ada"]).json()["serving"] == "v2"
        while frames[-1]["type"] != "done":
            frames.append(ws.receive_json())
        assert frames[-1]["adapter_version"] == "v1" and len(frames) == 2 + 60  # finished on v1, whole
        ws.send_json({"type": "user_message", "text": "and now?"})
        done = next(f for f in iter(ws.receive_json, None) if f["type"] == "done")
        assert done["adapter_version"] == "v2"
        session_id, secret = frames[0]["session_id"], frames[0]["session_token"]
    transcript = client.get(f"/api/sessions/{session_id}", headers={"X-Session-Token": secret}).json()
    assert [(m["role"], m["adapter_version"]) for m in transcript["messages"] if m["role"] == "assistant"] == [
        ("assistant", "v1"),
        ("assistant", "v2"),
    ]


def test_the_watcher_stops_when_cancelled_as_a_change_notification_arrives(any_store, settings):
    """A server's shutdown cancels the watcher; a NOTIFY landing in the same loop turn must not swallow
    that cancel (Python 3.11's `asyncio.wait_for` did, and shutdown then waited forever)."""

    async def cancel_while_notified() -> bool:
        manager = AdapterManager(GenerationBridge(FakeGenerator()), any_store, settings.adapters_dir, poll_seconds=0.05)
        watcher = asyncio.create_task(manager.run())
        async with asyncio.timeout(30):  # a loaded 2-core machine can take longer than 0.2 s to sync
            while not manager.synced:
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)  # a few polls in
        assert manager.synced and not watcher.done()
        manager.wake.set()
        watcher.cancel()
        done, _ = await asyncio.wait({watcher}, timeout=2)
        return watcher in done and watcher.cancelled()

    assert asyncio.run(cancel_while_notified())
