"""Retrieval for grounded answers: the knowledge base's passages and the correction memory, searched by
cosine similarity in process (a matrix of unit vectors; `numpy`).

The `Retriever` follows the store: before a search it compares the store's fingerprints (documents,
corrections) with what it loaded and reloads what changed, so a correction approved on any server is
used by the very next question here, and a `supportloop kb add` shows up without a restart. Passages are
embedded once, at ingestion, and loaded as bytes; correction questions are embedded here (few, cached).
All of it is blocking: the web app calls it off the event loop.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bot.runtime.embeddings import Embedder, LazyEmbedder, from_bytes
from feedback.db import Store
from feedback.knowledge import StoredPassage, fingerprint, load_passages
from feedback.memory import Memory, approved_memories, memory_fingerprint

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Hit:
    kind: str  # "kb" or "correction"
    title: str
    url: str
    text: str
    score: float
    chunk_id: int | None = None
    correction_id: int | None = None
    question: str = ""  # a correction's: the customer's question it answered


@dataclass(frozen=True)
class Retrieval:
    passages: list[Hit] = field(default_factory=list)  # best first, above the threshold, within the budget
    kb_size: int = 0  # passages searched (0: no knowledge base, so nothing to refuse on)


def top(matrix: np.ndarray, query: np.ndarray, k: int) -> list[tuple[int, float]]:
    """Indices and scores of the `k` rows most similar to `query` (rows and query are unit vectors)."""
    if matrix.shape[0] == 0 or k <= 0:
        return []
    scores = matrix @ query
    k = min(k, scores.shape[0])
    best = np.argpartition(-scores, k - 1)[:k]
    best = best[np.argsort(-scores[best], kind="stable")]
    return [(int(i), float(scores[i])) for i in best]


@dataclass
class _Loaded:
    stamp: Any = None
    rows: list[Any] = field(default_factory=list)
    matrix: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float32))


class Retriever:
    def __init__(
        self,
        store: Store,
        embedder: Embedder | LazyEmbedder,
        *,
        kb: bool = True,
        memory: bool = True,
        top_k: int = 3,
        kb_min_score: float = 0.4,
        memory_min_score: float = 0.7,
        max_chars: int = 2400,
    ) -> None:
        self.store, self.embedder, self.kb_on, self.memory_on = store, embedder, kb, memory
        self.top_k, self.max_chars = top_k, max_chars
        self.kb_min_score, self.memory_min_score = kb_min_score, memory_min_score
        self._kb, self._memory = _Loaded(), _Loaded()
        self._question_vectors: dict[tuple[int, str], np.ndarray] = {}
        self._lock = threading.Lock()

    def retrieve(self, question: str) -> Retrieval:
        """The correction whose question is closest (above `memory_min_score`) first, then the best KB
        passages above `kb_min_score`, at most `top_k` in all and `max_chars` of text."""
        if not (self.kb_on or self.memory_on):
            return Retrieval()
        kb, memory = self._refresh(self.kb_on, self.memory_on)
        if not (kb.rows and self.kb_on) and not (memory.rows and self.memory_on):
            return Retrieval()  # nothing to search: no embedding needed (nor a model loaded)
        query = self.embedder.encode([question])[0]
        hits = self._memory_hits(memory, query) + self._kb_hits(kb, query)
        return Retrieval(self._within_budget(hits[: self.top_k]), kb.matrix.shape[0])

    def search(self, question: str, k: int) -> list[Hit]:
        """The `k` passages closest to `question`, whatever their score (`kb search`, the console)."""
        kb, _ = self._refresh(kb=True, memory=False)
        if not kb.rows:
            return []
        query = self.embedder.encode([question])[0]
        return [self._kb_hit(kb.rows[i], score) for i, score in top(kb.matrix, query, k)]

    def _refresh(self, kb: bool, memory: bool) -> tuple[_Loaded, _Loaded]:
        with self._lock, self.store.session() as session:
            if kb:
                stamp = fingerprint(session)
                if stamp != self._kb.stamp:
                    self._kb = self._load_kb(stamp, load_passages(session, embedding_model=self.embedder.identity))
            if memory:
                stamp = memory_fingerprint(session)
                if stamp != self._memory.stamp:
                    self._memory = self._load_memory(stamp, approved_memories(session))
            return self._kb, self._memory

    def _load_kb(self, stamp: Any, passages: list[StoredPassage]) -> _Loaded:
        log.info("knowledge base: %d passages loaded", len(passages))
        return _Loaded(stamp, list(passages), from_bytes([p.embedding for p in passages]))

    def _load_memory(self, stamp: Any, memories: list[Memory]) -> _Loaded:
        keys = [(m.correction_id, m.question) for m in memories]
        missing = [key for key in keys if key not in self._question_vectors]
        if missing:
            for key, vector in zip(missing, self.embedder.encode([q for _, q in missing]), strict=True):
                self._question_vectors[key] = vector
        self._question_vectors = {key: self._question_vectors[key] for key in keys}
        matrix = np.stack([self._question_vectors[key] for key in keys]) if keys else np.zeros((0, 0), np.float32)
        log.info("correction memory: %d approved corrections loaded", len(memories))
        return _Loaded(stamp, list(memories), matrix.astype(np.float32))

    def _memory_hits(self, memory: _Loaded, query: np.ndarray) -> list[Hit]:
        if not self.memory_on:
            return []
        hits = top(memory.matrix, query, 1)
        return [
            Hit("correction", "Answer from our support team", "", m.answer, score, correction_id=m.correction_id,
                question=m.question)
            for i, score in hits if score >= self.memory_min_score
            for m in [memory.rows[i]]
        ]  # fmt: skip

    def _kb_hits(self, kb: _Loaded, query: np.ndarray) -> list[Hit]:
        if not self.kb_on:
            return []
        return [self._kb_hit(kb.rows[i], s) for i, s in top(kb.matrix, query, self.top_k) if s >= self.kb_min_score]

    @staticmethod
    def _kb_hit(passage: StoredPassage, score: float) -> Hit:
        url = passage.url if passage.url.startswith(("http://", "https://")) else ""
        return Hit("kb", passage.title, url, passage.text, score, chunk_id=passage.chunk_id)

    def _within_budget(self, hits: list[Hit]) -> list[Hit]:
        kept, used = [], 0
        for hit in hits:
            if kept and used + len(hit.text) > self.max_chars:
                break
            kept.append(hit)
            used += len(hit.text)
        return kept
