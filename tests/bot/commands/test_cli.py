"""The `supportloop` command line, run as a user runs it (the installed console script)."""

from __future__ import annotations

import pytest

from feedback import migrate, repo
from feedback.db import open_store
from feedback.tokens import hash_token
from tests.support.common import run_cli

_run = run_cli


@pytest.mark.parametrize(
    "args, expected",
    [
        ((), "serve"),
        (("serve",), "--port"),
        (("model", "pull"), "SUPPORTLOOP_MODEL_CACHE"),
        (("staff", "add"), "--role"),
        (("train",), "--epochs"),
        (("db", "upgrade"), "--revision"),
        (("db", "backup"), "pg_dump"),
        (("export",), "--since"),
        (("adapters", "promote"), "--force"),
        (("adapters", "list"), "--json"),
        (("adapters", "canary"), "percent"),
        (("adapters", "stop-canary"), "end the running canary"),
    ],
)
def test_every_command_has_help(args, expected):
    result = _run(*args, "--help")
    assert result.returncode == 0 and expected in result.stdout


def test_staff_add_prints_token_once_and_stores_its_hash(tmp_path):
    env = {"SUPPORTLOOP_DATA_DIR": str(tmp_path)}
    result = _run("staff", "add", "erin", "--role", "admin", env=env)
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip().splitlines()[-1]
    store = open_store(f"sqlite:///{tmp_path / 'supportloop.db'}")
    with store.session() as session:
        staff = repo.staff_by_token(session, token=token)
        assert staff.name == "erin" and staff.role.value == "admin" and staff.token_hash == hash_token(token)
    store.dispose()
    again = _run("staff", "add", "erin", env=env)
    assert again.returncode == 1 and "already exists" in again.stderr


def test_train_without_corrections_says_so(tiny_model, tmp_path):
    env = {"SUPPORTLOOP_DATA_DIR": str(tmp_path), "SUPPORTLOOP_BASE_MODEL": str(tiny_model)}
    result = _run("train", "--quiet", env=env)
    assert result.returncode == 0 and "nothing to train: no approved corrections" in result.stdout  # not an error
    unknown = _run("train", "--methods", "sft,ppo", env=env)
    assert unknown.returncode == 2 and "unknown training methods ['ppo']" in unknown.stderr


def test_missing_model_gives_clear_error(tmp_path):
    env = {"SUPPORTLOOP_DATA_DIR": str(tmp_path), "SUPPORTLOOP_MODEL_CACHE": str(tmp_path / "empty-cache")}
    result = _run("train", env=env)
    assert result.returncode == 2 and "supportloop model pull" in result.stderr and "Traceback" not in result.stderr
    custom = _run("serve", env={**env, "SUPPORTLOOP_BASE_MODEL": str(tmp_path)})
    assert custom.returncode == 2 and "no config.json" in custom.stderr


def test_db_upgrade_migrates_and_is_repeatable(tmp_path):
    env = {"SUPPORTLOOP_DATABASE_URL": f"sqlite:///{tmp_path / 'ops.db'}"}
    first, head = _run("db", "upgrade", env=env), migrate.head()
    assert first.returncode == 0 and f"schema empty → {head}" in first.stdout, first.stderr
    again = _run("db", "upgrade", env=env)
    assert again.returncode == 0 and f"schema {head} → {head}" in again.stdout
    bad = _run("export", "--format", "csv", str(tmp_path / "x.jsonl"), env=env)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


def test_adapters_promote_and_rollback_from_the_command_line(tmp_path):
    env = {"SUPPORTLOOP_DATA_DIR": str(tmp_path)}
    assert _run("adapters", "list", env=env).returncode == 0  # creates the store
    store = open_store(f"sqlite:///{tmp_path / 'supportloop.db'}")
    with store.session() as session:
        for version, rejected in (("v1", False), ("v-gated", True)):
            repo.register_adapter(
                session,
                version=version,
                path=f"/a/{version}",
                base_model="m",
                parent=None,
                dataset_hash=None,
                metrics={},
                activate=False,
                rejected=rejected,
            )
    store.dispose()
    promoted = _run("adapters", "promote", "v1", env=env)
    assert promoted.returncode == 0 and "v1 is now active" in promoted.stdout and "was base" in promoted.stdout
    refused = _run("adapters", "promote", "v-gated", env=env)
    assert refused.returncode == 1 and "rejected by the evaluation gate" in refused.stderr
    assert _run("adapters", "promote", "nope", env=env).stderr.strip() == "error: unknown adapter version 'nope'"
    forced = _run("adapters", "promote", "v-gated", "--force", env=env)
    assert forced.returncode == 0 and "forced past the gate" in forced.stdout
    listing = _run("adapters", "list", env=env).stdout
    assert [line.split()[:2] for line in listing.splitlines()[1:]] == [
        ["base", "available"],
        ["v-gated", "active"],
        ["v1", "retired"],
    ]
    back = _run("adapters", "rollback", env=env)
    assert back.returncode == 0 and "v1 is now active" in back.stdout


def test_adapters_canary_from_the_command_line(tmp_path):
    env = {"SUPPORTLOOP_DATA_DIR": str(tmp_path)}
    store = open_store(f"sqlite:///{tmp_path / 'supportloop.db'}")
    with store.session() as session:
        repo.register_adapter(
            session,
            version="v1",
            path="/a/v1",
            base_model="m",
            parent=None,
            dataset_hash=None,
            metrics={},
            activate=False,
        )
    store.dispose()
    for percent in ("150", "0"):
        refused = _run("adapters", "canary", "v1", percent, env=env)
        assert refused.returncode == 1 and "above 0 and at most 100" in refused.stderr
    assert "no canary is running" in _run("adapters", "stop-canary", env=env).stderr
    started = _run("adapters", "canary", "v1", "10", env=env)
    assert started.returncode == 0 and "v1 answers 10 % of the sessions started from now on" in started.stdout
    assert _run("adapters", "canary", "v1", "25", env=env).returncode == 0  # a new percentage, same canary
    listing = _run("adapters", "list", env=env).stdout.splitlines()
    assert listing[2].split()[:3] == ["v1", "canary", "25%"] and listing[1].split()[:2] == ["base", "active"]
    stopped = _run("adapters", "stop-canary", env=env)
    assert stopped.returncode == 0 and "canary of v1 stopped" in stopped.stdout
    assert _run("adapters", "list", env=env).stdout.splitlines()[2].split()[:2] == ["v1", "candidate"]
