"""Fixtures of the web app's tests: a ready app on the fake generator, staff tokens."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
from fastapi.testclient import TestClient

from bot.server.app import create_app
from feedback import repo
from feedback.models import StaffRole
from tests.support.common import wait_until
from tests.support.fakes import HashEmbedder


@pytest.fixture
def embedder() -> HashEmbedder:
    return HashEmbedder()


@pytest.fixture
def serve(settings, any_store, fake, embedder):
    """`serve(**update)`: a ready app on `any_store`, the fake generator and the test embedder, with
    `settings` changed by `update` (and a message rate no test reaches)."""

    @contextmanager
    def serve(**update):
        changed = settings.model_copy(update={"rate_limit": "1000/minute", **update})
        with TestClient(create_app(changed, generator=fake, store=any_store, embedder=embedder)) as client:
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
