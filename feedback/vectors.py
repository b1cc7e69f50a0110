"""The knowledge base's vectors in PostgreSQL with pgvector, when the extension is there (torch-free).

`enable` is idempotent and safe with several servers at once (an advisory lock): it creates the extension
when it is available but not yet created, the table `knowledgevector` (a passage's embedding as a pgvector
`vector`, deleted with its passage), and copies the vectors of passages that have none yet from their
stored bytes. The table is made here, not by a migration, because the extension can be installed after
the schema was made; SQLite and a PostgreSQL without pgvector never get it. `index` adds an HNSW index
(inner product: the vectors are unit vectors, so it orders by cosine similarity) for one dimension.

`search` gives the passages closest to a query, best first, with their cosine similarity.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from sqlalchemy import text
from sqlmodel import Session

from feedback.knowledge import StoredPassage

log = logging.getLogger(__name__)
LOCK = 0x5EC7_0001  # pg_advisory_xact_lock key for the schema changes below
BATCH = 1000  # vectors copied per statement


def pgvector_version(session: Session) -> str | None:
    """The installed (or installable) pgvector version on this PostgreSQL; None elsewhere."""
    if session.get_bind().dialect.name != "postgresql":
        return None
    row = session.execute(
        text("SELECT coalesce(installed_version, default_version) FROM pg_available_extensions WHERE name = 'vector'")
    ).first()
    return None if row is None else str(row[0])


def enable(session: Session) -> str | None:
    """Make the vector table ready and filled; pgvector's version, or None when it cannot be used here
    (not PostgreSQL, the extension not installed, or no right to create it: logged)."""
    version = pgvector_version(session)
    if version is None:
        return None
    try:
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOCK})
        session.execute(text("CREATE EXTENSION IF NOT EXISTS vector"))
        session.execute(
            text(
                "CREATE TABLE IF NOT EXISTS knowledgevector ("
                " chunk_id integer PRIMARY KEY REFERENCES knowledgechunk(id) ON DELETE CASCADE,"
                " embedding vector NOT NULL)"
            )
        )
        copied = _copy_missing(session)
        session.commit()
    except Exception as exc:  # e.g. no right to CREATE EXTENSION: the caller searches in process
        session.rollback()
        log.warning("pgvector %s is installed but cannot be used: %s", version, exc)
        return None
    if copied:
        log.info("pgvector: %d passage vectors copied into knowledgevector", copied)
    return version


def _copy_missing(session: Session) -> int:
    missing = text(
        "SELECT c.id, c.embedding FROM knowledgechunk c LEFT JOIN knowledgevector v ON v.chunk_id = c.id"
        " WHERE v.chunk_id IS NULL ORDER BY c.id LIMIT :n"
    )
    insert = text(
        "INSERT INTO knowledgevector (chunk_id, embedding) VALUES (:id, CAST(:v AS vector)) ON CONFLICT DO NOTHING"
    )
    copied = 0
    while rows := session.execute(missing, {"n": BATCH}).all():
        session.execute(insert, [{"id": row[0], "v": literal(np.frombuffer(row[1], np.float32))} for row in rows])
        copied += len(rows)
    return copied


def index(session: Session, dim: int) -> None:
    """An HNSW index for `dim`-dimensional vectors (a partial index: other models' vectors may differ)."""
    session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOCK})
    session.execute(
        text(
            f"CREATE INDEX IF NOT EXISTS knowledgevector_hnsw_{int(dim)} ON knowledgevector"
            f" USING hnsw ((embedding::vector({int(dim)})) vector_ip_ops) WHERE vector_dims(embedding) = {int(dim)}"
        )
    )
    session.commit()


def count(session: Session, *, embedding_model: str) -> int:
    """Passages embedded with `embedding_model` that have a vector here."""
    return int(
        session.execute(
            text(
                "SELECT count(*) FROM knowledgevector v JOIN knowledgechunk c ON c.id = v.chunk_id"
                " JOIN knowledgedocument d ON d.id = c.document_id WHERE d.embedding_model = :model"
            ),
            {"model": embedding_model},
        ).scalar_one()
    )


def search(
    session: Session, query: Sequence[float] | np.ndarray, *, embedding_model: str, k: int
) -> list[tuple[StoredPassage, float]]:
    """The `k` passages closest to the unit vector `query`, best first, of those embedded with
    `embedding_model` (HNSW, an approximate search, when the index exists). The index finds the `k`
    closest vectors of the query's dimension first: passages of another model of the same dimension,
    left from before a change of model until `kb add` embeds them again, take places there."""
    rows = session.execute(text(search_sql(len(query))), {"q": literal(query), "model": embedding_model, "k": k}).all()
    return [(StoredPassage(row[0], row[1], row[2], row[3], b""), float(row[4])) for row in rows]


def search_sql(dim: int) -> str:
    """`search`'s statement for `dim`-dimensional vectors (parameters: q, model, k)."""
    distance = f"embedding::vector({int(dim)}) <#> CAST(:q AS vector({int(dim)}))"
    return (
        f"SELECT c.id, c.title, d.url, c.text, -v.distance FROM (SELECT chunk_id, {distance} AS distance"
        f" FROM knowledgevector WHERE vector_dims(embedding) = {int(dim)} ORDER BY {distance} LIMIT :k) v"
        " JOIN knowledgechunk c ON c.id = v.chunk_id JOIN knowledgedocument d ON d.id = c.document_id"
        " WHERE d.embedding_model = :model ORDER BY v.distance"
    )


def literal(vector: Sequence[float] | np.ndarray) -> str:
    """pgvector's text form of a vector: "[0.1,0.2,...]"."""
    return "[" + ",".join(repr(float(x)) for x in vector) + "]"
