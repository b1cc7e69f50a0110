"""Prometheus metrics for one app (its own registry, so several apps can live in one process)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64)


class Metrics:
    def __init__(self, stats: Callable[[], dict], active_version: Callable[[], str]) -> None:
        self.registry = registry = CollectorRegistry()
        self.requests = Counter(
            "supportloop_chat_requests", "Chat requests by API and outcome", ["api", "outcome"], registry=registry
        )
        self.tokens = Counter("supportloop_tokens", "Tokens processed", ["kind"], registry=registry)
        self.ttft = Histogram(
            "supportloop_time_to_first_token_seconds", "Time to first token", buckets=LATENCY_BUCKETS, registry=registry
        )
        self.latency = Histogram(
            "supportloop_answer_seconds", "Time to the complete answer", buckets=LATENCY_BUCKETS, registry=registry
        )
        self.retrieval = Histogram(
            "supportloop_retrieval_seconds",
            "Retrieval before an answer (knowledge base and correction memory), including the wait for its batch",
            ["outcome"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.swaps = Counter("supportloop_adapter_swaps", "Adapter versions swapped in", registry=registry)
        self.swap_seconds = Histogram(
            "supportloop_adapter_swap_seconds",
            "From deciding to swap (a poll or "
            "notification seeing a new version, or an admin request) to serving it: "
            "load, validation, probe",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.canary_rollbacks = Counter(
            "supportloop_canary_rollbacks",
            "Canaries rolled back automatically by this server (thumbs-down rate significantly worse)",
            registry=registry,
        )
        Gauge("supportloop_queue_depth", "Requests waiting for a batch slot", registry=registry).set_function(
            lambda: stats().get("queue_depth", 0)
        )
        Gauge("supportloop_batch_size", "Requests in the running batch", registry=registry).set_function(
            lambda: stats().get("batch_size", 0)
        )
        for name, key, doc in (
            ("supportloop_engine_step_seconds", "step_seconds", "Time spent in batch steps"),
            ("supportloop_engine_steps", "steps", "Batch steps (forward passes) run"),
            (
                "supportloop_engine_step_rows",
                "step_rows",
                "Requests per step, summed over steps (÷ steps = mean batch size)",
            ),
            (
                "supportloop_engine_prefill_tokens",
                "prefill_tokens",
                "Prompt tokens computed (not served from the prefix cache)",
            ),
            (
                "supportloop_prefill_worker_steps",
                "prefill_steps",
                "Steps of the prefill worker (the steps above are the decode batch's)",
            ),
            ("supportloop_prefill_worker_seconds", "prefill_seconds", "Time the prefill worker spent in steps"),
        ):
            Gauge(name, doc, registry=registry).set_function(lambda key=key: stats().get(key, 0))
        self._version = Gauge(
            "supportloop_active_adapter",
            "1 for the adapter version serving new requests",
            ["version"],
            registry=registry,
        )
        self._active_version = active_version
        self._shown: str | None = None

    def swapped(self, seconds: float) -> None:
        self.swaps.inc()
        self.swap_seconds.observe(seconds)

    def answered(self, api: str, prompt_tokens: int, completion_tokens: int, ttft_s: float, total_s: float) -> None:
        self.requests.labels(api, "ok").inc()
        self.tokens.labels("prompt").inc(prompt_tokens)
        self.tokens.labels("completion").inc(completion_tokens)
        self.ttft.observe(ttft_s)
        self.latency.observe(total_s)

    def refused(self, api: str, code: str) -> None:
        self.requests.labels(api, code).inc()

    def render(self) -> bytes:
        version = self._active_version()
        if version != self._shown:
            if self._shown is not None:
                self._version.remove(self._shown)
            self._version.labels(version).set(1)
            self._shown = version
        return generate_latest(self.registry)
