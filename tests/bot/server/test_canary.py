"""Canaries: the statistical rule that rolls one back, the store's rules for starting and ending one,
how sessions are routed to it through the real app (SQLite file and PostgreSQL), the LRU of loaded
adapters that never drops the active version or a canary, and changes serialized across processes."""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta
from math import comb

import pytest
from sqlmodel import select

from bot.runtime.adapter_manager import in_canary
from feedback import canary, repo, versions
from feedback.models import Adapter, AdapterActivation, AdapterStatus, Canary, Role, Thumb, utcnow
from feedback.versions import CanaryTarget
from tests.bot.server.test_versions_api import _register
from tests.support.common import wait_until


def _fisher_greater(a: int, n1: int, c: int, n2: int) -> float:
    """P(X >= a) for X ~ Hypergeometric: the one-sided Fisher exact p-value, computed by hand."""
    downs, total = a + c, n1 + n2
    return sum(comb(n1, k) * comb(n2, downs - k) for k in range(a, min(n1, downs) + 1)) / comb(total, downs)


@pytest.mark.parametrize(
    "canary_down, active_down, worse", [(9, 3, True), (8, 3, False), (12, 3, True), (5, 5, False), (3, 12, False)]
)
def test_the_rule_is_a_one_sided_fisher_test_at_five_percent(canary_down, active_down, worse):
    verdict = canary.judge(canary_down, 20, active_down, 20)
    assert verdict.worse is worse
    assert verdict.p_value == pytest.approx(_fisher_greater(canary_down, 20, active_down, 20), abs=1e-6)


def test_the_rule_waits_for_twenty_votes_on_each_side():
    assert canary.judge(19, 19, 0, 20) == canary.Verdict(False, None, 19, 19, 0, 20)
    assert canary.judge(20, 20, 0, 19).p_value is None
    assert canary.judge(20, 20, 0, 20).worse


def test_sessions_are_split_by_percentage_stick_and_grow_with_it():
    started = utcnow()
    ids = [uuid.uuid4().hex for _ in range(4000)]
    at = lambda percent: CanaryTarget("v2", "/a", 7, percent, started)  # noqa: E731
    ten = {i for i in ids if in_canary(at(10), i, started)}
    twenty = {i for i in ids if in_canary(at(20), i, started + timedelta(seconds=1))}
    assert 0.08 < len(ten) / len(ids) < 0.12 and 0.17 < len(twenty) / len(ids) < 0.23
    assert ten <= twenty  # raising the percentage keeps the sessions already in the canary
    assert not any(in_canary(at(100), i, started - timedelta(seconds=1)) for i in ids[:100])  # older sessions: never
    assert all(in_canary(at(100), i, started) for i in ids[:100])
    other = {i for i in ids if in_canary(CanaryTarget("v2", "/a", 8, 10, started), i, started)}
    assert len(other & ten) < len(ten) / 2  # the next canary picks other sessions


def _store_with(any_store, tmp_path, *versions_: str, rejected: tuple[str, ...] = ()) -> None:
    for version in versions_:
        _register(any_store, tmp_path, version, rejected=version in rejected)


def test_the_store_refuses_bad_canaries_and_ends_one_that_is_promoted(any_store, tmp_path):
    _store_with(any_store, tmp_path, "v1", "v2", "v-gated", rejected=("v-gated",))
    with any_store.session() as s:
        for version, percent, error, reason in [
            ("v1", 150, repo.Invalid, "at most 100"),
            ("v1", 0, repo.Invalid, "above 0"),
            ("nope", 10, repo.NotFound, "unknown"),
            ("base", 10, repo.Conflict, "already the active"),
            ("v-gated", 10, repo.Conflict, "rejected by the evaluation gate"),
        ]:
            with pytest.raises(error, match=reason):
                canary.start(s, version, percent, actor="cli")
            s.rollback()
        with pytest.raises(repo.Conflict, match="no canary is running"):
            canary.stop(s, actor="cli")
        s.rollback()
        first = canary.start(s, "v1", 10, actor="cli")
        again = canary.start(s, "v1", 30, actor="cli")
        assert (again.id, again.percent, again.started_at) == (first.id, 30, first.started_at)
        with pytest.raises(repo.Conflict, match="a canary of v1 is running"):
            canary.start(s, "v2", 10, actor="cli")
        s.rollback()
        versions.promote(s, "v1", actor="cli")
        ended = s.exec(select(Canary)).one()
        assert (ended.outcome, ended.ended_by) == ("promoted", "cli") and repo.running_canary(s) is None
        forced = canary.start(s, "v-gated", 5, actor="cli", force=True)
        assert forced.forced and canary.stop(s, actor="cli").outcome == "stopped"


def _answers(store, counts: dict[str, tuple[int, int]]) -> None:
    """Answers by each version with (thumbs down, thumbs up) votes, in one new conversation."""
    with store.session() as s:
        conversation = repo.get_or_create_conversation(s, conversation_id=None, system_prompt="")
        for version, (down, up) in counts.items():
            for thumb in [Thumb.down] * down + [Thumb.up] * up:
                message = repo.add_message(
                    s, conversation_id=conversation.id, role=Role.assistant, text="a", adapter_version=version
                )
                repo.set_feedback(s, message_id=message.id, thumb=thumb)


def test_a_canary_significantly_worse_than_the_active_version_is_rolled_back(any_store, tmp_path):
    _store_with(any_store, tmp_path, "v1", "v2")
    with any_store.session() as s:
        versions.promote(s, "v1", actor="cli")
    _answers(any_store, {"v2": (0, 30)})  # before the canary: not counted
    with any_store.session() as s:
        canary.start(s, "v2", 50, actor="cli")
    _answers(any_store, {"v2": (8, 12), "v1": (3, 17)})  # p = 0.078: not significant
    with any_store.session() as s:
        assert canary.auto_rollback(s) is None and repo.running_canary(s).version == "v2"
    _answers(any_store, {"v2": (2, 0)})  # 10 of 22 against 3 of 20: p = 0.036
    with any_store.session() as s:
        ended = canary.auto_rollback(s)
        assert (ended.outcome, ended.ended_by) == ("rolled back", "auto-rollback")
        assert canary.describe(ended)["detail"] | {"p_value": None} == {
            "worse": True,
            "p_value": None,
            "canary_down": 10,
            "canary_votes": 22,
            "active_down": 3,
            "active_votes": 20,
        }
        assert canary.auto_rollback(s) is None and versions.active_version(s) == "v1"


def test_a_canary_better_than_the_active_version_keeps_running(any_store, tmp_path):
    _store_with(any_store, tmp_path, "v1")
    with any_store.session() as s:
        canary.start(s, "v1", 50, actor="cli")
    _answers(any_store, {"v1": (0, 40), "base": (30, 10)})
    with any_store.session() as s:
        assert canary.auto_rollback(s) is None
        assert canary.evaluate(s, repo.running_canary(s)).p_value == pytest.approx(1.0)


def test_concurrent_promotions_are_serialized(any_store, tmp_path):
    """Eight promotions at once from eight connections: each records the version it replaced, one chain."""
    names = [f"v{i}" for i in range(8)]
    _store_with(any_store, tmp_path, *names)
    barrier = threading.Barrier(len(names))

    def promote(version: str) -> None:
        with any_store.session() as s:
            barrier.wait()
            versions.promote(s, version, actor="cli")

    threads = [threading.Thread(target=promote, args=(v,)) for v in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with any_store.session() as s:
        history = list(s.exec(select(AdapterActivation).order_by(AdapterActivation.id)))
        active = list(s.exec(select(Adapter).where(Adapter.status == AdapterStatus.active)))
    assert len(history) == len(names) and [h.previous for h in history] == ["base"] + [h.version for h in history[:-1]]
    assert [a.version for a in active] == [history[-1].version]


# through the app --------------------------------------------------------------------------------


def _ask(client, session: tuple[str, str] | None = None) -> tuple[tuple[str, str], str]:
    """((session id, its secret), the answer's version) of a question in `session`, else in a new one."""
    session_id, secret = session or (None, "")
    reply = client.post(
        "/api/chat", json={"message": "hi", "session_id": session_id}, headers={"X-Session-Token": secret}
    )
    reply = reply.json()
    assert session is None or reply["session_id"] == session_id  # the same session, not a new one
    return (reply["session_id"], reply["session_token"] or secret), reply["adapter_version"]


def test_a_canary_answers_its_share_of_new_sessions_and_each_keeps_its_version(serve, admin, any_store, settings):
    _register(any_store, settings.adapters_dir, "v1")
    with serve() as client:
        older, _ = _ask(client)
        started = client.post("/api/admin/adapters/v1/canary", json={"percent": 50}, headers=admin["ada"])
        assert started.status_code == 200 and started.json()["percent"] == 50 and started.json()["actor"] == "ada"
        sessions = dict(_ask(client) for _ in range(40))
        assert 8 <= list(sessions.values()).count("v1") <= 32 and "base" in sessions.values()
        assert all(_ask(client, sid)[1] == version for sid, version in sessions.items())  # sticky
        assert _ask(client, older)[1] == "base"  # started before the canary
        listed = client.get("/api/admin/adapters", headers=admin["ada"]).json()
        assert listed["canary"]["version"] == "v1" and listed["canary"]["verdict"]["worse"] is False
        assert next(v for v in listed["versions"] if v["version"] == "v1")["canary_percent"] == 50
        assert client.post("/api/admin/adapters/canary/stop", headers=admin["ada"]).json()["outcome"] == "stopped"
        assert {_ask(client, sid)[1] for sid in sessions} == {"base"}
        client.post("/api/admin/adapters/v1/canary", json={"percent": 100}, headers=admin["ada"])
        assert _ask(client)[1] == "v1"
        promoted = client.post("/api/admin/adapters/v1/promote", headers=admin["ada"]).json()
        assert (
            promoted["serving"] == "v1"
            and client.get("/api/admin/adapters", headers=admin["ada"]).json()["canary"] is None
        )
    with any_store.session() as s:
        assert [c.outcome for c in s.exec(select(Canary).order_by(Canary.id))] == ["stopped", "promoted"]
        assert [a.action for a in repo.list_actions(s)][::-1] == [
            "adapter.canary",
            "adapter.canary_stop",
            "adapter.canary",
            "adapter.promote",
        ]


def test_bad_canary_requests_change_nothing(serve, admin, any_store, settings, fake):
    _register(any_store, settings.adapters_dir, "v1")
    _register(any_store, settings.adapters_dir, "v-broken", valid=False)
    with serve() as client:
        cases = [
            ("v1", {"percent": 150}, 422, "less than or equal to 100"),
            ("v1", {"percent": 0}, 422, "greater than 0"),
            ("v1", {}, 422, "Field required"),
            ("nope", {"percent": 5}, 404, "unknown adapter version"),
            ("base", {"percent": 5}, 409, "already the active version"),
            ("v-broken", {"percent": 5}, 422, "adapter_config.json"),
        ]
        for version, body, status, reason in cases:
            reply = client.post(f"/api/admin/adapters/{version}/canary", json=body, headers=admin["ada"])
            assert reply.status_code == status and reason in reply.text, (version, body, reply.text)
        stop = client.post("/api/admin/adapters/canary/stop", headers=admin["ada"])
        assert stop.status_code == 409 and "no canary is running" in stop.json()["detail"]
        assert (
            client.post("/api/admin/adapters/v1/canary", json={"percent": 5}, headers=admin["bob"]).status_code == 403
        )
        assert client.get("/api/admin/adapters", headers=admin["ada"]).json()["canary"] is None
    with any_store.session() as s:
        assert s.exec(select(Canary)).all() == [] and "v-broken" not in fake.adapters


def test_the_server_rolls_back_a_worse_canary_by_itself(serve, admin, any_store, settings):
    _register(any_store, settings.adapters_dir, "v1")
    with serve() as client:
        client.post("/api/admin/adapters/v1/canary", json={"percent": 100}, headers=admin["ada"])
        assert _ask(client)[1] == "v1"
        _answers(any_store, {"v1": (12, 8), "base": (2, 18)})
        wait_until(lambda: client.app.state.adapters.canary is None, timeout=10)
        assert _ask(client)[1] == "base"
        assert "supportloop_canary_rollbacks_total 1.0" in client.get("/metrics").text
    with any_store.session() as s:
        assert s.exec(select(Canary)).one().outcome == "rolled back"


def test_loaded_adapters_are_capped_least_recently_used_first_never_the_active_or_canary(
    serve, admin, any_store, settings, fake
):
    for version in ("v1", "v2", "v3", "v4"):
        _register(any_store, settings.adapters_dir, version)
    with serve(max_loaded_adapters=3) as client:  # room for the newest candidate, preloaded
        wait_until(lambda: list(fake.adapters) == ["v4"])
        post = lambda url, **kw: client.post(f"/api/admin/adapters/{url}", headers=admin["ada"], **kw)  # noqa: E731
        for version in ("v1", "v2", "v3"):
            post(f"{version}/promote")
        wait_until(lambda: set(fake.adapters) == {"v4", "v2", "v3"})  # v1, least recently used, went
        post("rollback")  # to v2: still loaded, so no load
        post("v1/canary", json={"percent": 100})
        wait_until(lambda: set(fake.adapters) == {"v4", "v2", "v1"})  # v3 went, not the active v2 or the canary v1
        assert _ask(client)[1] == "v1"
        post("v4/promote")  # preloaded: a flip
        assert fake.loads == ["v4", "v1", "v2", "v3", "v1"]
