"""The knowledge base searched by pgvector inside a real PostgreSQL: the same passages and scores as the
in-process search, its HNSW index used, changes followed, and several servers enabling it at once.

The local PostgreSQL 15 has no pgvector (Debian's `postgresql-15-pgvector` is not in bookworm main), so
these run on PostgreSQL 16 with pgvector 0.6 from the `pgserver` wheel (a test dependency), or on the
local server when it has the extension. Without either they are skipped, saying so; in CI they must run."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import text

from bot.runtime.retrieval import Retriever
from feedback import vectors
from feedback.db import open_store
from feedback.knowledge import remove_source
from tests.support.fakes import HashEmbedder
from tests.support.grounding import add_page
from tests.support.services import drop_database, postgres_database

PAGES = {
    "a-and-b.md": "# A and B Guest House\n\n## Check-in\n\nCheck-in at A and B Guest House is from 3:30pm.\n\n"
    "## Pets\n\nPets are not allowed at A and B Guest House.\n",
    "ashley.md": "# Ashley Hotel\n\n## Parking\n\nThe Ashley Hotel has free parking.\n\n"
    "## Check-out\n\nCheck-out at the Ashley Hotel is by 10am.\n",
}
QUESTIONS = ["When is check-in at A and B Guest House?", "Is parking free at the Ashley Hotel?", "pets allowed?"]


@pytest.fixture
def vector_store(pgvector_admin):
    url = postgres_database(pgvector_admin, "supportloop_pgvector")
    store = open_store(url)
    yield store
    store.dispose()
    drop_database(url, pgvector_admin)


def _fill(store, folder) -> HashEmbedder:
    embedder = HashEmbedder()
    for name, page in PAGES.items():
        add_page(store, embedder, folder, name, page)
    return embedder


def _found(retriever: Retriever, question: str) -> list[tuple[str, float]]:
    return [(h.title, round(h.score, 4)) for h in retriever.search(question, 3)]


def test_pgvector_finds_what_the_in_process_search_finds_and_uses_its_index(vector_store, store, tmp_path):
    embedder = _fill(vector_store, tmp_path)
    _fill(store, tmp_path)  # the same pages in SQLite: searched in process
    in_postgres, in_process = Retriever(vector_store, embedder), Retriever(store, embedder)
    for question in QUESTIONS:
        assert _found(in_postgres, question) == _found(in_process, question)
    assert in_postgres.retrieve(QUESTIONS[0]).kb_size == 4
    with vector_store.session() as s:
        assert s.execute(text("SELECT count(*) FROM knowledgevector")).scalar_one() == 4
        s.execute(text("SET enable_seqscan = off"))  # 4 rows: the planner would scan; show the index serves
        query = {"q": vectors.literal(embedder.encode(["check-in"])[0]), "model": embedder.identity, "k": 3}
        plan = s.execute(text("EXPLAIN " + vectors.search_sql(512)), query).all()
    assert "knowledgevector_hnsw_512" in "\n".join(row[0] for row in plan)


def test_added_and_removed_documents_are_followed(vector_store, tmp_path):
    embedder = HashEmbedder()
    add_page(vector_store, embedder, tmp_path, "a-and-b.md", PAGES["a-and-b.md"])
    retriever = Retriever(vector_store, embedder, kb_min_score=0.3)
    assert retriever.retrieve(QUESTIONS[1]).passages == []
    add_page(vector_store, embedder, tmp_path, "ashley.md", PAGES["ashley.md"])  # as `kb add` on another machine
    assert retriever.retrieve(QUESTIONS[1]).passages[0].title == "Ashley Hotel › Parking"
    with vector_store.session() as s:
        remove_source(s, source="help")
    retrieval = retriever.retrieve(QUESTIONS[1])
    assert retrieval.passages == [] and retrieval.kb_size == 0
    with vector_store.session() as s:
        assert s.execute(text("SELECT count(*) FROM knowledgevector")).scalar_one() == 0  # deleted with them


def test_memory_mode_keeps_the_search_in_process(vector_store, tmp_path):
    embedder = _fill(vector_store, tmp_path)
    retriever = Retriever(vector_store, embedder, vector_search="memory")
    assert retriever.search(QUESTIONS[0], 1)[0].title == "A and B Guest House › Check-in"
    with vector_store.session() as s:
        assert s.execute(text("SELECT to_regclass('knowledgevector')")).scalar_one() is None


def test_servers_enabling_pgvector_at_once_leave_one_copy_of_each_vector(vector_store, tmp_path):
    embedder = _fill(vector_store, tmp_path)
    found, errors = [], []

    def replica() -> None:
        try:
            found.append(_found(Retriever(vector_store, embedder), QUESTIONS[0]))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=replica) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(found) == 4 and all(f == found[0] for f in found)
    with vector_store.session() as s:
        assert s.execute(text("SELECT count(*) FROM knowledgevector")).scalar_one() == 4


def test_sqlite_and_postgresql_without_the_extension_search_in_process(any_store, tmp_path):
    embedder = _fill(any_store, tmp_path)
    with any_store.session() as s:
        if vectors.pgvector_version(s) is not None:
            pytest.skip("this PostgreSQL has pgvector")
        assert vectors.enable(s) is None
    assert Retriever(any_store, embedder).search(QUESTIONS[1], 1)[0].title == "Ashley Hotel › Parking"
