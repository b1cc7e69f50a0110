"""Adding read documents to the knowledge base: each is embedded and stored in its own transaction (an
unchanged one is skipped before anything is embedded; a changed one has its passages replaced). Used by
`supportloop kb add` and the console's Knowledge page. Blocking: the web app calls it off the event loop."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from bot.runtime.embeddings import Embedder, LazyEmbedder, embed_passages
from feedback.db import Store
from feedback.knowledge import Document, is_current, store_document


@dataclass
class Ingested:
    outcomes: dict[str, int] = field(default_factory=lambda: {"added": 0, "replaced": 0, "unchanged": 0})
    passages: int = 0  # passages embedded and stored


def ingest(
    store: Store,
    embedder: Embedder | LazyEmbedder,
    source: str,
    documents: Iterable[Document],
    on_document: Callable[[Ingested], None] = lambda _done: None,
) -> Ingested:
    done = Ingested()
    for document in documents:
        with store.session() as session:
            if is_current(session, source=source, document=document, embedding_model=embedder.identity):
                done.outcomes["unchanged"] += 1
            else:
                blobs = embed_passages(embedder, document.passages)
                done.outcomes[store_document(session, source=source, document=document,
                                             embedding_model=embedder.identity, embeddings=blobs)] += 1  # fmt: skip
                done.passages += len(document.passages)
        on_document(done)
    return done
