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
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlmodel import Session

from bot.runtime.embeddings import Embedder, LazyEmbedder, from_bytes
from feedback import vectors
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
    answer: str = ""  # a question-and-answer pair's answer (a correction, an FAQ row or a question heading)


@dataclass(frozen=True)
class Retrieval:
    passages: list[Hit] = field(default_factory=list)  # best first, above the threshold, within the budget
    kb_size: int = 0  # passages searched (0: no knowledge base, so nothing to refuse on)


QUERY_CACHE = 4096  # query vectors kept (1.5 KB each with MiniLM)
CANDIDATES = 20  # the closest passages (and corrections) that the name check looks through
_SENTENCES = re.compile(r"[.!?;:]\s+|\n")
_WORD = re.compile(r"[A-Za-z][A-Za-z0-9'’-]*")
_TERM = re.compile(r"[a-z0-9]+")


def terms(text: str) -> frozenset[str]:
    """Lower-case words of at least 3 characters, a final plural "s" dropped (so "Bennys" meets "Benny's")."""
    words = _TERM.findall(text.lower().replace("'s", "s").replace("’s", "s"))
    return frozenset(
        w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w for w in words if len(w) > 2
    )


def names(question: str) -> frozenset[str]:
    """What a question names: its capitalised words that do not start a sentence ("Kirkwood House",
    "BYOB"), as `terms`. A passage or correction about something else does not answer it."""
    found: set[str] = set()
    for sentence in _SENTENCES.split(question):
        found |= {t for word in _WORD.findall(sentence)[1:] if word[0].isupper() for t in terms(word)}
    return frozenset(found)


def faq_answer(passage: StoredPassage) -> str:
    """The answer when a passage answers one question: an FAQ row ("question\nanswer", titled with the
    question) or a section under a heading that asks a question; "" for any other passage."""
    question = passage.title.rsplit(" › ", 1)[-1].strip()
    if not question.endswith("?"):
        return ""
    first, _, rest = passage.text.partition("\n")
    return rest.strip() if first.strip() == question and rest.strip() else passage.text.strip()


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
    in_postgres: int = 0  # passages searched by pgvector in PostgreSQL (then `rows` and `matrix` stay empty)

    @property
    def size(self) -> int:
        return self.in_postgres or len(self.rows)


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
        match_names: bool = True,
        query_cache: int = QUERY_CACHE,
        vector_search: str = "auto",
    ) -> None:
        self.store, self.embedder, self.kb_on, self.memory_on = store, embedder, kb, memory
        self.top_k, self.max_chars, self.match_names = top_k, max_chars, match_names
        self.kb_min_score, self.memory_min_score = kb_min_score, memory_min_score
        self._kb, self._memory = _Loaded(), _Loaded()
        self._question_vectors: dict[tuple[int, str], np.ndarray] = {}
        self._queries: OrderedDict[str, np.ndarray] = OrderedDict()
        self.query_cache, self.vector_search = query_cache, vector_search
        self._pgvector: str | None = None  # pgvector's version once the store is found to have it
        self._checked_pgvector, self._indexed_dims = False, set[int]()
        self._lock = threading.Lock()

    def retrieve(self, question: str) -> Retrieval:
        """The correction whose question is closest (above `memory_min_score`) first, then the best KB
        passages above `kb_min_score`, at most `top_k` in all and `max_chars` of text. With `match_names`,
        only passages and corrections that mention every name in the question (see `names`)."""
        return self.retrieve_many([question])[0]

    def warm(self) -> None:
        """Load what is stored and the embedding model, even with nothing to search yet: else the first
        approved correction or uploaded document would load it during the questions asked at that moment
        (every customer asking then waited 4.4 s in `tests/bot/server/test_crash_safety.py`'s load). Never
        raises (retrieval reports its own failures when it is used)."""
        try:
            self.retrieve_many(["warm-up"])
            self.embedder.encode(["warm-up"])
        except Exception:
            log.exception("retrieval could not be prepared")

    def retrieve_many(self, questions: list[str]) -> list[Retrieval]:
        """`retrieve` for several questions at once: one store check and one batch through the embedder
        (the server batches the questions that arrive together)."""
        if not (self.kb_on or self.memory_on):
            return [Retrieval() for _ in questions]
        kb, memory = self._refresh(self.kb_on, self.memory_on)
        if not (kb.size and self.kb_on) and not (memory.rows and self.memory_on):
            return [Retrieval() for _ in questions]  # nothing to search: no embedding needed (nor a model loaded)
        queries = self._embed_queries(questions)
        return [self._retrieval(kb, memory, q, query) for q, query in zip(questions, queries, strict=True)]

    def _embed_queries(self, questions: list[str]) -> list[np.ndarray]:
        """Query vectors, the last `query_cache` distinct questions' kept: customers ask the same things
        ("What are your opening hours?"), and an embedding costs the model's cores."""
        new = list(dict.fromkeys(q for q in questions if q not in self._queries))
        for question, vector in zip(new, self.embedder.encode(new) if new else [], strict=True):
            self._queries[question] = vector
        vectors = [self._queries[q] for q in questions]
        for question in questions:
            self._queries.move_to_end(question)
        while len(self._queries) > self.query_cache:
            self._queries.popitem(last=False)
        return vectors

    def _retrieval(self, kb: _Loaded, memory: _Loaded, question: str, query: np.ndarray) -> Retrieval:
        required = names(question) if self.match_names else frozenset()
        hits = self._memory_hits(memory, query, required) + self._kb_hits(kb, query, required)
        return Retrieval(self._within_budget(hits[: self.top_k]), kb.size if self.kb_on else 0)

    def search(self, question: str, k: int) -> list[Hit]:
        """The `k` passages closest to `question`, whatever their score (`kb search`)."""
        return self.explain(question, k)[0]

    def explain(self, question: str, k: int) -> tuple[list[Hit], Retrieval]:
        """For the console: the `k` closest passages whatever their score, and what `retrieve` gives (one
        embedding for both)."""
        kb, memory = self._refresh(kb=True, memory=self.memory_on)
        if not kb.size and not memory.rows:
            return [], Retrieval()
        query = self.embedder.encode([question])[0]
        hits = [self._kb_hit(passage, score) for passage, score in self._kb_top(kb, query, k)]
        return hits, self._retrieval(kb, memory, question, query)

    def _refresh(self, kb: bool, memory: bool) -> tuple[_Loaded, _Loaded]:
        with self._lock, self.store.session() as session:
            if kb:
                stamp = fingerprint(session)
                if stamp != self._kb.stamp:
                    self._kb = self._load_kb(session, stamp)
            if memory:
                stamp = memory_fingerprint(session)
                if stamp != self._memory.stamp:
                    self._memory = self._load_memory(stamp, approved_memories(session))
            return self._kb, self._memory

    def _load_kb(self, session: Session, stamp: Any) -> _Loaded:
        """The passages in memory; or, where PostgreSQL has pgvector (and `vector_search` is "auto"),
        their vectors copied there and searched there."""
        if not self._checked_pgvector and self.vector_search == "auto":
            self._pgvector, self._checked_pgvector = vectors.enable(session), True
        elif self._pgvector:
            vectors.enable(session)  # copies the vectors of passages added since
        if self._pgvector:
            size = vectors.count(session, embedding_model=self.embedder.identity)
            log.info("knowledge base: %d passages, searched with pgvector %s in PostgreSQL", size, self._pgvector)
            return _Loaded(stamp, in_postgres=size)
        passages = load_passages(session, embedding_model=self.embedder.identity)
        log.info("knowledge base: %d passages loaded (searched in process)", len(passages))
        return _Loaded(stamp, list(passages), from_bytes([p.embedding for p in passages]))

    def _kb_top(self, kb: _Loaded, query: np.ndarray, k: int) -> list[tuple[StoredPassage, float]]:
        """The `k` passages closest to `query`, best first."""
        if not kb.in_postgres:
            return [(kb.rows[i], score) for i, score in top(kb.matrix, query, k)]
        with self.store.session() as session:
            if len(query) not in self._indexed_dims:
                vectors.index(session, len(query))
                self._indexed_dims.add(len(query))
            return vectors.search(session, query, embedding_model=self.embedder.identity, k=k)

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

    def _memory_hits(self, memory: _Loaded, query: np.ndarray, required: frozenset[str]) -> list[Hit]:
        if not self.memory_on:
            return []
        for i, score in top(memory.matrix, query, CANDIDATES):
            m = memory.rows[i]
            if score >= self.memory_min_score and required <= terms(f"{m.question} {m.answer}"):
                return [Hit("correction", "Answer from our support team", "", m.answer, score,
                            correction_id=m.correction_id, answer=m.answer)]  # fmt: skip
        return []

    def _kb_hits(self, kb: _Loaded, query: np.ndarray, required: frozenset[str]) -> list[Hit]:
        if not self.kb_on:
            return []
        candidates = self._kb_top(kb, query, max(CANDIDATES, self.top_k))
        return [
            self._kb_hit(passage, score) for passage, score in candidates
            if score >= self.kb_min_score and required <= terms(f"{passage.title} {passage.text}")
        ][: self.top_k]  # fmt: skip

    @staticmethod
    def _kb_hit(passage: StoredPassage, score: float) -> Hit:
        url = passage.url if passage.url.startswith(("http://", "https://")) else ""
        return Hit("kb", passage.title, url, passage.text, score, chunk_id=passage.chunk_id, answer=faq_answer(passage))

    def _within_budget(self, hits: list[Hit]) -> list[Hit]:
        kept, used = [], 0
        for hit in hits:
            if kept and used + len(hit.text) > self.max_chars:
                break
            kept.append(hit)
            used += len(hit.text)
        return kept
