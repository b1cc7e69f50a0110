"""Grounded answers on the real models: a knowledge base built from DSTC9 FAQ pages with
`supportloop kb add` (real all-MiniLM-L6-v2), the real SmolLM2 behind a real websocket on a real port:
a question its FAQ answers is answered with that answer and cites it; a question about a hotel it does not
cover gets the no-answer text; a correction approved through the staff API answers the very next question,
reworded, with no training."""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from bot.runtime.base_model import pull_default_model
from bot.server.app import create_app
from bot.server.settings import Settings
from feedback import repo
from feedback.db import open_store
from feedback.models import Message, StaffRole
from tests.support.common import FAQ, ask_over_websocket
from tests.support.services import LiveServer, drop_database, postgres_database

pytestmark = pytest.mark.integration
CLI = str(Path(sys.executable).parent / "supportloop")
ENTITIES = 12


def _help_centre(folder: Path) -> None:
    """One Markdown page per entity, as a company's help centre would have them."""
    if not FAQ.is_file():
        pytest.skip(f"the DSTC9 FAQ data is not at {FAQ}")
    pages = collections.defaultdict(list)
    for row in map(json.loads, FAQ.open()):
        if len(pages) < ENTITIES or row["entity_name"] in pages:
            pages[row["entity_name"]].append(row)
    folder.mkdir()
    for name, rows in pages.items():
        body = "\n\n".join(f"## {r['question']}\n\n{r['answer']}" for r in rows)
        (folder / f"{name.lower().replace(' ', '-')}.md").write_text(f"# {name.title()}\n\n{body}\n")


def _kb_add(tmp_path: Path, env: dict[str, str]) -> None:
    _help_centre(tmp_path / "help")
    added = subprocess.run([CLI, "kb", "add", str(tmp_path / "help"), "--source", "help-centre", "--quiet",
                            "--base-url", "https://help.example.com"], env=env, capture_output=True, text=True)  # fmt: skip
    assert added.returncode == 0 and f"{ENTITIES} added" in added.stdout, added.stdout + added.stderr


def test_answers_are_grounded_in_the_kb_and_in_approved_corrections(tmp_path):
    cache = Settings().model_cache
    pull_default_model(cache, progress=False)
    _kb_add(tmp_path, {**os.environ, "SUPPORTLOOP_DATA_DIR": str(tmp_path / "data")})
    settings = Settings(data_dir=tmp_path / "data", model_cache=cache, max_new_tokens=48)
    with LiveServer(create_app(settings)) as server:
        ws_url = server.url.replace("http", "ws") + "/ws/chat"
        grounded = ask_over_websocket(ws_url, "What time is check-in at A and B Guest House?")
        print("kb:", grounded)
        assert grounded["sources"][0] == {
            "title": "A And B Guest House › What time is check-in there?",
            "url": "https://help.example.com/a-and-b-guest-house.md",
            "kind": "kb",
        }
        store = open_store(settings.db_url)
        with store.session() as s:
            prompt = s.get(Message, grounded["message_id"]).grounding
        store.dispose()
        assert grounded["text"] == "Check-in time is from 3:30pm - 9:00pm."  # quoted: an FAQ answer, close enough
        assert prompt is None and grounded["prompt_tokens"] == 0  # the model was not asked

        elsewhere = ask_over_websocket(
            ws_url, "Is there parking at Kirkwood House?"
        )  # a hotel the help centre does not cover
        assert elsewhere["text"] == settings.no_answer_text and elsewhere["sources"] == []

        first = ask_over_websocket(ws_url, "Do you have a gift shop for customers?")
        store = open_store(settings.db_url)
        with store.session() as s:
            _, token = repo.create_staff(s, name="ada", role=StaffRole.admin)
        store.dispose()
        answer = "Yes, our gift shop is open daily from 9am to 5pm."
        approved = httpx.post(
            f"{server.url}/api/messages/{first['message_id']}/corrections",
            json={"text": answer, "approve": True},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert approved.status_code == 201, approved.text
        remembered = ask_over_websocket(ws_url, "Is there a gift shop for customers?")
        print("memory:", remembered)
        assert remembered["sources"] == [{"title": "Answer from our support team", "url": "", "kind": "correction"}]
        assert remembered["text"] == answer  # at once, reworded, no training


def test_a_postgresql_store_with_pgvector_answers_the_same_from_postgresql(tmp_path, pgvector_admin):
    """`kb add` into PostgreSQL with pgvector; the server copies the vectors there at start and searches
    there: the FAQ answer is quoted and cited, a hotel the KB does not cover gets the no-answer text."""
    url = postgres_database(pgvector_admin, "supportloop_pgvector")
    try:
        cache = Settings().model_cache
        pull_default_model(cache, progress=False)
        _kb_add(
            tmp_path, {**os.environ, "SUPPORTLOOP_DATA_DIR": str(tmp_path / "data"), "SUPPORTLOOP_DATABASE_URL": url}
        )
        settings = Settings(data_dir=tmp_path / "data", database_url=url, model_cache=cache, max_new_tokens=48)
        with LiveServer(create_app(settings)) as server:
            ws_url = server.url.replace("http", "ws") + "/ws/chat"
            grounded = ask_over_websocket(ws_url, "What time is check-in at A and B Guest House?")
            elsewhere = ask_over_websocket(ws_url, "Is there parking at Kirkwood House?")
        store = open_store(url)
        with store.session() as s:
            vectors, chunks = (
                s.execute(text(f"SELECT count(*) FROM {t}")).scalar_one() for t in ("knowledgevector", "knowledgechunk")
            )
        store.dispose()
    finally:
        drop_database(url, pgvector_admin)
    assert vectors == chunks > ENTITIES  # every passage searched in PostgreSQL
    assert grounded["text"] == "Check-in time is from 3:30pm - 9:00pm."
    assert grounded["sources"][0]["title"] == "A And B Guest House › What time is check-in there?"
    assert elsewhere["text"] == settings.no_answer_text and elsewhere["sources"] == []
