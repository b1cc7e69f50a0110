"""Fixtures every test folder uses: the tiny random-weight model, stores on a real SQLite file and on the
real local PostgreSQL, settings, the fake generator; and the pytest header naming the CPU."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bot.server.settings import Settings
from feedback.db import Store, open_store
from tests.support.common import CHROMIUM, FAQ, PG_ADMIN_URL, drop_postgres, postgres_url
from tests.support.fakes import FakeGenerator
from tests.support.services import pgvector_database
from tests.support.tiny import build_tiny_model

if CHROMIUM is None and os.environ.get("CI"):
    raise RuntimeError("CI must run the browser tests: install Debian's chromium package (make test does, as root)")


CPU_FEATURES = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16")


def pytest_report_header(config) -> list[str]:
    """The CPU's features and the precision serving chooses on it, so that a CI log shows both."""
    from bot.runtime.prepacked_linear import cpu_flags
    from bot.runtime.workers import thread_counts

    flags = cpu_flags()
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    name = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")), "?")
    has = " ".join(f for f in CPU_FEATURES if f in flags) or "none"
    lacks = " ".join(f for f in CPU_FEATURES if f not in flags) or "none"
    threads = thread_counts(0, prefill=True)
    return [
        f"cpu: {name}, {os.cpu_count()} cores; has: {has}; lacks: {lacks}",
        f"serving precision (model workers at {'/'.join(map(str, threads))} thread(s)): {_serving_packing(threads)}",
    ]


def _serving_packing(threads: tuple[int, ...]) -> str:
    """What `prepack_linears` chooses for one Linear of each of the served model's shapes."""
    import torch
    from torch import nn
    from transformers import AutoConfig, AutoModelForCausalLM

    from bot.runtime.base_model import ModelNotAvailable, resolve_base_model
    from bot.runtime.prepacked_linear import prepack_linears

    settings = Settings()
    try:
        folder = resolve_base_model(settings.base_model, settings.model_cache)
    except ModelNotAvailable:
        return "not checked (the model is not pulled)"
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder))
    shapes = dict.fromkeys(
        (m.in_features, m.out_features, m.bias is not None) for m in model.modules() if type(m) is nn.Linear
    )
    layers = nn.Sequential(*[nn.Linear(i, o, bias=bias) for i, o, bias in shapes])
    return f"{folder.name}, one Linear of each shape: {prepack_linears(layers, threads=threads).describe()}"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"), FAQ if FAQ.is_file() else None)


@pytest.fixture(params=["sqlite", "postgresql"])
def any_db_url(request, tmp_path) -> str:
    """An empty database: a real SQLite file, or a fresh database on the real local PostgreSQL."""
    url = f"sqlite:///{tmp_path / 'store.db'}" if request.param == "sqlite" else postgres_url()
    yield url
    if request.param == "postgresql":
        drop_postgres(url)


@pytest.fixture
def any_store(any_db_url) -> Store:
    """The migrated store on a real SQLite file and on the real local PostgreSQL."""
    store = open_store(any_db_url)
    yield store
    store.dispose()


@pytest.fixture(scope="session")
def pgvector_admin(tmp_path_factory) -> str:
    """An admin URL of a PostgreSQL with pgvector (see `pgvector_database`); skipped, saying why, where
    there is none, but never in CI."""
    url, where = pgvector_database(PG_ADMIN_URL, tmp_path_factory.mktemp("pgvector"))
    if url is None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must test pgvector: {where}")
        pytest.skip(f"PGVECTOR NOT TESTED: {where}")
    print(f"pgvector tests on {where}")
    return url


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
