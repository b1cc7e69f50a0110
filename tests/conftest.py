from __future__ import annotations

import os
import shutil
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from bench.live import drop_database, free_port, launch_chromium, postgres_database
from bot.app import create_app
from bot.settings import Settings
from feedback import repo
from feedback.db import Store, open_store
from feedback.models import StaffRole
from tests.fakes import FakeGenerator
from tests.tiny import build_tiny_model

ROOT = Path(__file__).resolve().parent.parent
FAQ = ROOT.parent / "shared" / "data" / "dstc9-faq" / "faq_qa.jsonl"
ARTIFACTS = Path(os.environ.get("SUPPORTLOOP_ARTIFACTS", ROOT / "test-artifacts"))  # screenshots
CHROMIUM = shutil.which("chromium")
if CHROMIUM is None and os.environ.get("CI"):
    raise RuntimeError("CI must run the browser tests: install Debian's chromium package (make test does, as root)")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="NO CHROMIUM: the browser tests (widget, staff console) did not run; install "
                                    "Debian's chromium package (`make test` does when run as root)")
PG_ADMIN_URL = os.environ.get("SUPPORTLOOP_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


CPU_FEATURES = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16")


def pytest_report_header(config) -> list[str]:
    """The CPU's features and the precision serving chooses on it, so that a CI log shows both."""
    from bot.fastlinear import cpu_flags
    from bot.worker import thread_counts

    flags = cpu_flags()
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    name = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")), "?")
    has = " ".join(f for f in CPU_FEATURES if f in flags) or "none"
    lacks = " ".join(f for f in CPU_FEATURES if f not in flags) or "none"
    threads = thread_counts(0, prefill=True)
    return [f"cpu: {name}, {os.cpu_count()} cores; has: {has}; lacks: {lacks}",
            f"serving precision (model workers at {'/'.join(map(str, threads))} thread(s)): {_serving_packing(threads)}"]


def _serving_packing(threads: tuple[int, ...]) -> str:
    """What `pack_linears` chooses for one Linear of each of the served model's shapes."""
    import torch
    from torch import nn
    from transformers import AutoConfig, AutoModelForCausalLM

    from bot.basemodel import ModelNotAvailable, resolve_base_model
    from bot.fastlinear import pack_linears

    settings = Settings()
    try:
        folder = resolve_base_model(settings.base_model, settings.model_cache)
    except ModelNotAvailable:
        return "not checked (the model is not pulled)"
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder))
    shapes = dict.fromkeys((m.in_features, m.out_features, m.bias is not None) for m in model.modules()
                           if type(m) is nn.Linear)
    layers = nn.Sequential(*[nn.Linear(i, o, bias=bias) for i, o, bias in shapes])
    return f"{folder.name}, one Linear of each shape: {pack_linears(layers, threads=threads).describe()}"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"), FAQ if FAQ.is_file() else None)


def _postgres_url() -> str:
    """A fresh database on the local PostgreSQL, for one test session."""
    return postgres_database(PG_ADMIN_URL, "supportloop_test")


def _drop_postgres(url: str) -> None:
    drop_database(url, PG_ADMIN_URL)


@pytest.fixture(params=["sqlite", "postgresql"])
def any_db_url(request, tmp_path) -> str:
    """An empty database: a real SQLite file, or a fresh database on the real local PostgreSQL."""
    url = f"sqlite:///{tmp_path / 'store.db'}" if request.param == "sqlite" else _postgres_url()
    yield url
    if request.param == "postgresql":
        _drop_postgres(url)


@pytest.fixture
def any_store(any_db_url) -> Store:
    """The migrated store on a real SQLite file and on the real local PostgreSQL."""
    store = open_store(any_db_url)
    yield store
    store.dispose()


@pytest.fixture
def store(tmp_path) -> Store:
    store = open_store(f"sqlite:///{tmp_path / 'store.db'}")
    yield store
    store.dispose()


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(data_dir=tmp_path / "data", adapter_poll_seconds=0.1, max_message_chars=200)


@pytest.fixture
def fake() -> FakeGenerator:
    return FakeGenerator()


@pytest.fixture
def serve(settings, any_store, fake):
    """`serve(**update)`: a ready app on `any_store` and the fake generator, with `settings` changed by
    `update` (and a message rate no test reaches)."""
    @contextmanager
    def serve(**update):
        changed = settings.model_copy(update={"rate_limit": "1000/minute", **update})
        with TestClient(create_app(changed, generator=fake, store=any_store)) as client:
            wait_until(lambda: client.get("/readyz").status_code == 200)
            yield client
    return serve


@pytest.fixture
def admin(any_store) -> dict:
    """Authorization headers of an admin (`ada`) and an agent (`bob`) on `any_store`."""
    with any_store.session() as s:
        _, token = repo.create_staff(s, name="ada", role=StaffRole.admin)
        _, agent = repo.create_staff(s, name="bob", role=StaffRole.agent)
    return {"ada": {"Authorization": f"Bearer {token}"}, "bob": {"Authorization": f"Bearer {agent}"}}


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium driven by Python playwright (through `executable_path`: never a browser download)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = launch_chromium(p)
        yield browser
        browser.close()


class LiveServer:
    """uvicorn on a real port in a thread (`port`: a given one, e.g. to restart a server where it was)."""

    def __init__(self, app, port: int | None = None) -> None:
        import uvicorn

        self.port = port or free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", ws="websockets-sansio")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def registry_entries(adapters_dir: Path) -> list[str]:
    """The adapter registry's entries, but for the anchors' cache."""
    from trainer.anchors import ANCHORS_DIR

    return sorted(p.name for p in Path(adapters_dir).iterdir() if p.name != ANCHORS_DIR)


def wait_until(predicate, timeout: float = 30.0, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")
