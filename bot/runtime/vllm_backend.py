"""`VLLMGenerator`: the `Generator` protocol over a vLLM OpenAI-compatible server (`SUPPORTLOOP_BACKEND=vllm`),
for GPUs. vLLM batches, schedules and keeps the KV cache; supportloop keeps what it owns: which adapter
version answers each request, and the versions' lifecycle.

Start vLLM with runtime LoRA updating on, with the adapter registry at the same path as this server sees it:

    VLLM_ALLOW_RUNTIME_LORA_UPDATING=True vllm serve BASE_MODEL --enable-lora --max-loras 4 --max-lora-rank 64

- a promoted version is loaded with `POST /v1/load_lora_adapter` under its own name (the version: never
  reused for other weights, so vLLM's stale caches after a same-name reload cannot serve old weights), then
  validated by a probe answer through it before it serves; a refusal leaves the old version serving;
- each request names its version as `model` (the base model's name for `base`), so a request already
  streaming finishes on the version it started with whatever is promoted meanwhile;
- a retired version is unloaded (`/v1/unload_lora_adapter`) once no request of this server uses it;
- `/health` is polled: while vLLM cannot be reached, `failure` says why (`/readyz` answers 503 with it) and
  requests end with `ModelUnavailable` (the client gets `model_unavailable`), never a 500.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from bot.runtime.generator import PROBE_MESSAGES, PROBE_TOKENS, UNLOAD_POLL_SECONDS
from bot.runtime.types import AdapterError, Busy, GenerationRequest, GenerationResult, ModelUnavailable
from feedback.registry import BASE_VERSION

log = logging.getLogger(__name__)
HEALTH_SECONDS = 2.0  # how often vLLM's /health is polled


class VLLMGenerator:
    def __init__(
        self, url: str, model: str = "", max_requests: int = 256, timeout: float = 600.0, start_timeout: float = 600.0
    ) -> None:
        self.url, self.model, self.max_requests = url.rstrip("/"), model, max_requests
        self.start_timeout = start_timeout  # how long `load` waits for vLLM to come up (it loads its model too)
        self.client = httpx.Client(base_url=self.url, timeout=httpx.Timeout(timeout, connect=5.0))
        self.pool = ThreadPoolExecutor(max_workers=max_requests, thread_name_prefix="supportloop-vllm")
        self.adapters: set[str] = set()
        self.failure: str | None = None
        self._in_flight: Counter[str] = Counter()
        self._lock, self._closed = threading.Lock(), threading.Event()
        self._health = threading.Thread(target=self._watch, name="supportloop-vllm-health", daemon=True)

    # ---- the Generator protocol -----------------------------------------------------------------

    def load(self) -> None:
        """Find the served base model (`model`, or the one vLLM serves), waiting up to `start_timeout` for
        vLLM to answer (started together, it is often still loading its model); raises after that."""
        deadline = time.monotonic() + self.start_timeout
        while True:
            try:
                models = self._get("/v1/models").json()["data"]
                break
            except ModelUnavailable:
                if time.monotonic() >= deadline:
                    raise
                log.info("waiting for vLLM at %s", self.url)
                time.sleep(HEALTH_SECONDS)
        served = [m["id"] for m in models if not m.get("parent")]
        if not self.model:
            self.model = served[0]
        elif self.model not in served:
            raise ModelUnavailable(f"vLLM at {self.url} serves {served}, not {self.model!r} (SUPPORTLOOP_VLLM_MODEL)")
        log.info("serving through vLLM at %s, base model %s", self.url, self.model)
        self._health.start()

    def submit(self, request: GenerationRequest, emit: Callable[[str], None], cancel: threading.Event) -> Future:
        version = request.adapter_version
        with self._lock:
            if self.failure:
                raise ModelUnavailable(self.failure)
            if version != BASE_VERSION and version not in self.adapters:
                raise AdapterError(f"adapter {version!r} is not loaded")
            if sum(self._in_flight.values()) >= self.max_requests:
                raise Busy(f"the server is at capacity ({self.max_requests} requests in progress)")
            self._in_flight[version] += 1
        future = self.pool.submit(self._answer, request, emit, cancel)
        future.add_done_callback(lambda _f: self._done(version))
        return future

    def load_adapter(self, version: str, path: Path) -> None:
        """Load `version` into vLLM and check it answers (a probe) before any customer's request uses it."""
        folder = str(Path(path).resolve())  # vLLM resolves a relative path from its own folder
        reply = self._post("/v1/load_lora_adapter", {"lora_name": version, "lora_path": folder})
        loaded_before = reply.status_code == 400 and "already" in reply.text  # e.g. this server restarted:
        # the same name is the same immutable version folder, so what vLLM holds is right
        if reply.status_code != 200 and not loaded_before:
            raise AdapterError(f"vLLM refused adapter {version}: {reply.status_code} {reply.text[:300]}")
        try:
            self._probe(version)
        except Exception as exc:
            self._post("/v1/unload_lora_adapter", {"lora_name": version})
            raise AdapterError(f"adapter {version} failed its probe in vLLM: {exc}") from exc
        with self._lock:
            self.adapters.add(version)

    def unload_adapter(self, version: str) -> None:
        """Unload `version` once no request of this server uses it (new ones are refused at once)."""
        with self._lock:
            self.adapters.discard(version)
        while self._in_flight[version] and not self._closed.is_set():
            time.sleep(UNLOAD_POLL_SECONDS)
        self._post("/v1/unload_lora_adapter", {"lora_name": version})

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"batch_size": sum(self._in_flight.values()), "queue_depth": 0, "adapters": len(self.adapters)}

    def close(self) -> None:
        self._closed.set()
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.client.close()

    # ---- requests -------------------------------------------------------------------------------

    def _answer(self, request: GenerationRequest, emit: Callable[[str], None], cancel: threading.Event):
        body = {
            "model": self._name(request.adapter_version),
            "messages": request.messages,
            "max_tokens": request.max_new_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "stream": True,
            "stream_options": {"include_usage": True},
            **({"stop": list(request.stop)} if request.stop else {}),
        }
        parts, finish, usage = [], "stop", {}
        try:
            with self.client.stream("POST", "/v1/chat/completions", json=body) as reply:
                self._check(reply, request.adapter_version)
                for chunk in _events(reply.iter_lines()):
                    if cancel.is_set():
                        finish = "cancelled"
                        break  # leaving the block closes the stream: vLLM aborts the request
                    usage = chunk.get("usage") or usage
                    for choice in chunk.get("choices", []):
                        if text := (choice.get("delta") or {}).get("content"):
                            parts.append(text)
                            emit(text)
                        finish = choice.get("finish_reason") or finish
        except httpx.TransportError as exc:
            raise ModelUnavailable(f"vLLM at {self.url} cannot be reached: {exc}") from exc
        return GenerationResult(
            "".join(parts).strip(),
            request.adapter_version,
            int(usage.get("prompt_tokens", 0)),
            int(usage.get("completion_tokens", len(parts))),
            finish if finish in ("stop", "length", "cancelled") else "stop",
        )

    def _check(self, reply: httpx.Response, version: str) -> None:
        if reply.status_code == 200:
            return
        detail = reply.read().decode(errors="replace")[:300]
        if reply.status_code == 404:
            raise AdapterError(f"vLLM does not serve {version!r}: {detail}")
        raise ModelUnavailable(f"vLLM answered {reply.status_code}: {detail}")

    def _probe(self, version: str) -> None:
        body = {"model": version, "messages": PROBE_MESSAGES, "max_tokens": PROBE_TOKENS, "temperature": 0.0}
        reply = self._post("/v1/chat/completions", body)
        if reply.status_code != 200:
            raise AdapterError(f"{reply.status_code} {reply.text[:300]}")
        if int(reply.json().get("usage", {}).get("completion_tokens", 0)) < 1:
            raise AdapterError("the probe prompt generated nothing")

    def _name(self, version: str) -> str:
        return self.model if version == BASE_VERSION else version

    def _done(self, version: str) -> None:
        with self._lock:
            self._in_flight[version] -= 1
            if not self._in_flight[version]:
                del self._in_flight[version]

    # ---- the server's health --------------------------------------------------------------------

    def _watch(self) -> None:
        while not self._closed.wait(HEALTH_SECONDS):
            self.check_health()

    def check_health(self) -> None:
        """Set `failure` while vLLM cannot be reached or says it is unhealthy; clear it when it is back."""
        try:
            status = self.client.get("/health", timeout=5.0).status_code
            failure = None if status == 200 else f"vLLM at {self.url} is unhealthy (/health: {status})"
        except httpx.HTTPError as exc:
            failure = f"vLLM at {self.url} cannot be reached: {exc}"
        if failure != self.failure:
            (log.error if failure else log.info)("%s", failure or f"vLLM at {self.url} is reachable again")
        self.failure = failure

    def _get(self, path: str) -> httpx.Response:
        try:
            reply = self.client.get(path)
        except httpx.HTTPError as exc:
            raise ModelUnavailable(f"vLLM at {self.url} cannot be reached: {exc}") from exc
        reply.raise_for_status()
        return reply

    def _post(self, path: str, body: dict) -> httpx.Response:
        try:
            return self.client.post(path, json=body)
        except httpx.HTTPError as exc:
            raise ModelUnavailable(f"vLLM at {self.url} cannot be reached: {exc}") from exc


def _events(lines: Iterator[str]) -> Iterator[dict]:
    """The JSON chunks of an OpenAI-style server-sent event stream, until `[DONE]`."""
    for line in lines:
        if not line.startswith("data:"):
            continue
        data = line.removeprefix("data:").strip()
        if data == "[DONE]":
            return
        yield json.loads(data)
