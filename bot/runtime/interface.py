"""The model runtime as the web app sees it: the one module `bot.server` and `bot.cli` import from
`bot.runtime` (tests/test_layering.py holds them to it).

- `build_generator` makes the configured `Generator` (the model in worker processes, or in this one);
  `build_vllm_generator` one that talks to a vLLM server;
- `GenerationBridge` streams a `GenerationRequest` into an async iterator of text and gives back a
  `GenerationResult`, without blocking the event loop;
- `AdapterManager` keeps the serving versions in sync with the store (validate → load → swap, canary);
- the errors a request may end with: `Busy` (queue full), `ModelUnavailable`, `AdapterError`;
- base-model provisioning for the `model pull` command and for start-up;
- retrieval for grounded answers: `load_embedder`, `Retriever` (knowledge base + correction memory).
"""

from __future__ import annotations

from pathlib import Path

from bot.runtime.adapter_manager import AdapterManager
from bot.runtime.base_model import pull_default_model, resolve_base_model
from bot.runtime.bridge import GenerationBridge
from bot.runtime.embeddings import Embedder, LazyEmbedder, default_embedding_model, embed_passages, load_embedder
from bot.runtime.generator import Generator
from bot.runtime.knowledge import Ingested, ingest
from bot.runtime.retrieval import Hit, Retrieval, Retriever
from bot.runtime.types import AdapterError, Busy, GenerationRequest, GenerationResult, ModelUnavailable

__all__ = [
    "Embedder",
    "LazyEmbedder",
    "Hit",
    "Retrieval",
    "Retriever",
    "default_embedding_model",
    "embed_passages",
    "Ingested",
    "ingest",
    "load_embedder",
    "AdapterError",
    "AdapterManager",
    "Busy",
    "GenerationBridge",
    "GenerationRequest",
    "GenerationResult",
    "Generator",
    "ModelUnavailable",
    "build_generator",
    "build_vllm_generator",
    "pull_default_model",
    "resolve_base_model",
]


def build_generator(
    model_path: Path,
    device: str,
    *,
    model_process: bool,
    prefill_process: bool | None,
    max_batch: int,
    max_queue: int,
    threads: int,
) -> Generator:
    """The model in worker processes (`model_process`, the default for serving) or in this process."""
    from bot.runtime.hf_generator import HFGenerator
    from bot.runtime.workers import ProcessGenerator

    if model_process:
        return ProcessGenerator(
            model_path,
            device,
            prefill_process=prefill_process,
            max_batch=max_batch,
            max_queue=max_queue,
            threads=threads,
        )
    return HFGenerator(model_path, device, max_batch=max_batch, max_queue=max_queue, threads=threads)


def build_vllm_generator(url: str, model: str, max_requests: int) -> Generator:
    """The model served by a vLLM OpenAI-compatible server (`SUPPORTLOOP_BACKEND=vllm`)."""
    from bot.runtime.vllm_backend import VLLMGenerator

    return VLLMGenerator(url, model, max_requests=max_requests)
