"""Rounds as operators run them, on the tiny model: `supportloop train` killed with SIGKILL leaves
nothing visible and the next round succeeds; the lock refuses a concurrent round; `--if-needed`;
`supportloop schedule`; the admin API starts a round in its own process and reports it."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlmodel import select

from bot.server.app import create_app
from bot.server.settings import Settings
from feedback import repo
from feedback.db import open_store
from feedback.models import Adapter, Role, StaffRole, TrainingRun
from tests.support.common import registry_entries, wait_until
from tests.support.fakes import FakeGenerator

CLI = str(Path(sys.executable).parent / "supportloop")
TINY_ROUND = ["--quiet", "--rank", "16", "--lr", "1e-2", "--epochs", "1", "--min-steps", "150", "--batch-size", "4"]


@pytest.fixture
def env(tiny_model, tmp_path) -> dict:
    return {
        **os.environ,
        "SUPPORTLOOP_DATA_DIR": str(tmp_path / "data"),
        "SUPPORTLOOP_BASE_MODEL": str(tiny_model),
        "SUPPORTLOOP_SYSTEM_PROMPT": "Be brief.",
    }


def _store(env: dict):
    return open_store(f"sqlite:///{Path(env['SUPPORTLOOP_DATA_DIR']) / 'supportloop.db'}")


def _seed(
    store,
    pairs=(
        ("When is check-in?", "Check-in is from 3:30pm to 9:00pm."),
        ("Is parking free?", "No, parking costs extra."),
    ),
) -> None:
    with store.session() as s:
        staff = repo.create_staff(s, name=f"agent{len(repo.list_staff(s))}")[0]
        for question, answer in pairs:
            conversation = repo.get_or_create_conversation(s, conversation_id=None, system_prompt="Be brief.")
            repo.add_message(s, conversation_id=conversation.id, role=Role.user, text=question)
            message = repo.add_message(
                s, conversation_id=conversation.id, role=Role.assistant, text="I don't know.", adapter_version="base"
            )
            repo.add_correction(s, message_id=message.id, actor=staff, text=answer, approve=True)


def _train(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, "train", *TINY_ROUND, *args], env=env, capture_output=True, text=True, timeout=600)


def _runs(store) -> list[TrainingRun]:
    with store.session() as s:
        return list(s.exec(select(TrainingRun).order_by(TrainingRun.id)))


def _training(store, run_id: int) -> bool:
    with store.session() as s:
        run = s.get(TrainingRun, run_id)
        return run is not None and json.loads(run.progress_json).get("step", 0) >= 2


def test_a_killed_round_leaves_nothing_visible_and_the_lock_refuses_a_second_meanwhile(env):
    store = _store(env)
    _seed(store)
    long = subprocess.Popen(
        [CLI, "train", *TINY_ROUND, "--min-steps", "100000"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: _training(store, 1), timeout=120, interval=0.2)
        busy = _train(env)
        assert busy.returncode == 75 and "another training round is running: run 1" in busy.stderr
    finally:
        long.send_signal(signal.SIGKILL)
        long.wait()
    adapters = Path(env["SUPPORTLOOP_DATA_DIR"]) / "adapters"
    assert [name for name in registry_entries(adapters) if not name.startswith(".staging-")] == []  # nothing published
    with store.session() as s:
        assert repo.active_adapter(s) is None and not repo.adapter_versions(s)
    done = _train(env)
    assert done.returncode in (0, 4), done.stdout + done.stderr
    assert "cleaned up after an interrupted round: removed .staging-sft-" in done.stdout
    version = done.stdout.split("new adapter ")[1].split()[0]
    assert registry_entries(adapters) == [version]  # the killed round's staging folder is gone
    assert [r.outcome for r in _runs(store)] == [
        "abandoned",
        "skipped",
        "published" if done.returncode == 0 else "rejected",
    ]
    store.dispose()


KILL_POINTS = ["phase:snapshot", "phase:anchors", "phase:train sft", "phase:gate", "phase:publish", "publish:folder",
               "phase:done"]  # fmt: skip


@pytest.mark.parametrize("point", KILL_POINTS)
def test_a_round_killed_at_any_phase_leaves_the_store_whole_and_the_next_round_recovers(env, point):
    """SIGKILL at the start of each phase (`feedback.failpoints`), and between the adapter's folder reaching
    the registry and its row reaching the store: servers never see half an adapter; the next round cleans
    up and succeeds. Killed once registered (`phase:done`), the adapter is whole and stays."""
    store = _store(env)
    _seed(store)
    adapters = Path(env["SUPPORTLOOP_DATA_DIR"]) / "adapters"
    killed = _train({**env, "SUPPORTLOOP_FAILPOINT": point}, "--min-steps", "20")
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    with store.session() as s:
        registered = repo.adapter_versions(s)
        assert [r.outcome for r in _runs(store)] == ["running"]  # until the next round finds it abandoned
    if point == "phase:done":
        assert len(registered) == 1 and (adapters / next(iter(registered)) / "adapter_model.safetensors").is_file()
    else:
        assert not registered  # nothing servers could load
    done = _train(env, "--min-steps", "20")
    assert done.returncode in (0, 4), done.stdout + done.stderr
    with store.session() as s:
        versions = repo.adapter_versions(s)
    assert registry_entries(adapters) == sorted(versions) and len(versions) == len(registered) + 1
    assert [r.outcome for r in _runs(store)][0] == "abandoned"
    store.dispose()


def test_if_needed_trains_only_on_enough_new_feedback(env):
    store = _store(env)
    _seed(store)
    first = _train(env, "--if-needed", "--min-new-feedback", "2")
    assert first.returncode in (0, 4) and "new adapter v1-" in first.stdout, (
        first.stdout + first.stderr
    )  # (4: the gate refused)
    _seed(store, (("Are pets allowed?", "No, pets are not allowed."),))
    again = _train(env, "--if-needed", "--min-new-feedback", "2")
    assert again.returncode == 0 and "not needed: 1 new votes and approved corrections" in again.stdout
    with store.session() as s:
        assert [a.version.split("-")[0] for a in s.exec(select(Adapter))] == ["v1"]
    store.dispose()


def test_schedule_runs_train_if_needed_on_its_interval(env):
    store = _store(env)
    schedule = subprocess.Popen(
        [CLI, "schedule", "--every", "2s", "--min-new-feedback", "5", "--", "--quiet"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_until(lambda: len(_runs(store)) >= 2, timeout=120, interval=0.2)
    finally:
        schedule.send_signal(signal.SIGINT)
        output = schedule.communicate(timeout=60)[0]
    runs = _runs(store)
    assert all(r.outcome == "skipped" and "not needed: 0 votes" in r.log for r in runs), [r.log for r in runs]
    assert "a round every 2 s when at least 5" in output and "exit status 0" in output
    store.dispose()


def test_bad_schedule_interval_is_refused(env):
    result = subprocess.run([CLI, "schedule", "--every", "soon"], env=env, capture_output=True, text=True)
    assert result.returncode == 2 and "'soon' is not a duration like 30m, 1h or 1h30m" in result.stderr


@pytest.fixture
def admin_client(tiny_model, tmp_path, any_db_url):
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=any_db_url,
        base_model=tiny_model,
        system_prompt="Be brief.",
        adapter_poll_seconds=0.2,
    )
    store = open_store(settings.db_url)
    headers = {}
    with store.session() as s:
        for name, role in (("ada", StaffRole.admin), ("bob", StaffRole.agent)):
            headers[name] = {"Authorization": f"Bearer {repo.create_staff(s, name=name, role=role)[1]}"}
    with TestClient(create_app(settings, generator=FakeGenerator(), store=store)) as client:
        yield client, store, headers
    store.dispose()


def test_the_admin_api_starts_a_round_in_its_own_process_and_reports_it(admin_client):
    client, store, headers = admin_client
    _seed(store)
    assert client.post("/api/admin/train", json={}, headers=headers["bob"]).status_code == 403
    assert client.post("/api/admin/train", json={"methods": "ppo"}, headers=headers["ada"]).status_code == 422
    assert client.get("/api/admin/train/999", headers=headers["ada"]).status_code == 404
    started = client.post("/api/admin/train", json={"methods": "sft"}, headers=headers["ada"])
    assert started.status_code == 202, started.text
    url = started.json()["url"]
    wait_until(lambda: client.get(url, headers=headers["ada"]).json()["outcome"] != "queued", timeout=60)
    again = client.post("/api/admin/train", json={}, headers=headers["ada"])
    finished = wait_until(
        lambda: (r := client.get(url, headers=headers["ada"]).json())["finished_at"] and r, timeout=600, interval=0.5
    )
    assert finished["outcome"] in ("published", "rejected"), finished["log"]
    assert finished["gate"] is not None and (finished["outcome"] == "published") == finished["gate"]["passed"]
    assert finished["adapter_version"].startswith("v1-") and finished["progress"] == {"phase": "done"}
    assert any(re.match(r"step (\d+)/\1 loss", line) for line in finished["log"])  # the last step's loss
    assert any(line.startswith("gate: ") for line in finished["log"])
    assert again.status_code == 409 and f"already running: run {started.json()['run_id']}" in again.json()["detail"]
    with store.session() as s:
        newest = repo.list_actions(s)[0]
    assert newest.action == "train.start" and json.loads(newest.detail_json)["requested_by"] == "ada"


@pytest.fixture
def pg_env(env):
    from tests.support.common import drop_postgres, postgres_url

    url = postgres_url()
    yield {**env, "SUPPORTLOOP_DATABASE_URL": url}
    drop_postgres(url)


def _full_disk() -> None:
    """In the child: files larger than 16 KiB cannot be written (EFBIG), like a disk that is full."""
    import resource

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (16384, 16384))


def test_a_round_that_cannot_write_its_adapter_leaves_no_partial_adapter(pg_env):
    store = open_store(pg_env["SUPPORTLOOP_DATABASE_URL"])  # the store is not on the "full" disk
    _seed(store)
    full = subprocess.run(
        [CLI, "train", *TINY_ROUND], env=pg_env, capture_output=True, text=True, timeout=600, preexec_fn=_full_disk
    )
    assert full.returncode != 0 and "File too large" in full.stdout + full.stderr
    adapters = Path(pg_env["SUPPORTLOOP_DATA_DIR"]) / "adapters"
    assert registry_entries(adapters) == []  # the staging folder was removed, nothing published
    with store.session() as s:
        assert not repo.adapter_versions(s)
    [run] = _runs(store)
    assert run.outcome == "failed" and "File too large" in run.log and run.finished_at
    done = _train(pg_env)
    assert done.returncode in (0, 4) and "new adapter v1-" in done.stdout, done.stdout + done.stderr
    store.dispose()
