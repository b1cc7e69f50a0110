"""`HFGenerator`: the `Generator` protocol (`bot.runtime.generator`) over a Hugging Face causal LM.

`HFGenerator` owns the model and a `bot.runtime.scheduler.Scheduler`: requests from every session are batched
(continuous batching); each row may use a different adapter version (PEFT `adapter_names`), so a swap
never touches a request already streaming. Adapter loads run in the scheduler's thread between steps.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import Future
from functools import partial
from pathlib import Path

from bot.runtime.base_model import base_model_id, resolve_device
from bot.runtime.generator import (
    PROBE_MESSAGES,
    PROBE_TOKENS,
    UNLOAD_POLL_SECONDS,
    model_threads,
    result_future,
    set_threads,
)
from bot.runtime.types import AdapterError, GenerationRequest, GenerationResult, Job, KVTransfer, Row, Segment
from feedback.registry import BASE_VERSION, ManifestError, manifest_path, read_manifest

log = logging.getLogger(__name__)

PACKED_ATTENTION = "supportloop_packed"


def _transfer_of(job_ref: weakref.ref[Job]) -> KVTransfer | None:
    job = job_ref()
    return job.transfer if job is not None else None


class HFGenerator:
    """A causal LM from a local checkpoint folder, LoRA adapters side by side by version, batched."""

    def __init__(
        self,
        model_path: Path,
        device: str = "auto",
        max_batch: int = 16,
        max_queue: int = 64,
        prefill_chunk: int = 256,
        threads: int = 0,
        lean_forward: bool = True,
        pack_threads: tuple[int, ...] = (),
    ) -> None:
        self.model_path, self.device_setting, self.threads = Path(model_path), device, threads
        self.pack_threads = pack_threads  # every thread count the model runs at (all workers): Linear prepacking
        # keeps a row's result the same at each (default: this generator's own)
        self.lean_forward = lean_forward  # the lean pass of `bot.runtime.lean_forward` where the model's kind allows
        self.max_batch, self.max_queue, self.prefill_chunk = max_batch, max_queue, prefill_chunk
        self.model = self.tokenizer = self.scheduler = None
        self.peft = None  # the PeftModel wrapping `model` once an adapter is loaded
        self.adapters: set[str] = set()
        self._system_cache: dict[str, list[int]] = {}

    def load(self) -> None:
        from bot.runtime.scheduler import Scheduler

        self._load_model()
        self._prepare_packed_batches()
        self.scheduler = Scheduler(
            self, max_batch=self.max_batch, max_queue=self.max_queue, prefill_chunk=self.prefill_chunk
        )
        self.scheduler.start()
        if self.device == "cpu":
            self.scheduler.call(partial(set_threads, model_threads(self.threads))).result()

    def _load_model(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from bot.runtime.prepacked_linear import prepack_linears

        self.device = resolve_device(self.device_setting)
        self.dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        model = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=self.dtype)
        self.model = model.to(self.device).eval()
        prepacking = prepack_linears(self.model, threads=self.pack_threads or (model_threads(self.threads),))
        log.info("serving %s on %s (%s), %s", self.model_path.name, self.device, self.dtype, prepacking.describe())
        self.context_window = int(getattr(model.config, "max_position_embeddings", 2048) or 2048)
        eos = model.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos]) | {self.tokenizer.eos_token_id}
        self.eos_ids.discard(None)

    def _prepare_packed_batches(self) -> None:
        """Route the model's attention through the packed-batch attention and allocate the KV slots."""
        import torch
        from transformers import AttentionInterface

        from bot.runtime.kv_cache import PackedCache, PrefixCache, packed_attention
        from bot.runtime.lean_forward import lean_stack

        self.lean = lean_stack(self.model) if self.lean_forward else None
        AttentionInterface.register(PACKED_ATTENTION, packed_attention)
        self.model.config._attn_implementation = PACKED_ATTENTION
        self._no_mask = torch.ones((1, 1, 1, 1), dtype=torch.bool, device=self.device)  # masks are per sequence
        text = self.model.config.get_text_config()
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        self.cache = PackedCache(
            text.num_hidden_layers,
            text.num_key_value_heads,
            head_dim,
            self.dtype,
            self.device,
            slots=self.max_batch + 2,
        )
        self.prefixes = PrefixCache()
        self._want_prefix: dict[int, tuple[str, tuple[int, ...]]] = {}

    def close(self) -> None:
        if self.scheduler is not None:
            self.scheduler.close()

    def stats(self) -> dict:
        if self.scheduler is None:
            return {}
        scheduler = self.scheduler
        return {
            "queue_depth": scheduler.queue_depth,
            "batch_size": len(scheduler.rows),
            "steps": scheduler.steps,
            "step_rows": scheduler.rows_stepped,
            "prefill_tokens": scheduler.prefill_tokens,
            "step_seconds": scheduler.seconds,
        }

    # ---- prompts --------------------------------------------------------------------------------

    def _template(self, messages: list[dict], generation_prompt: bool = True) -> list[int]:
        return list(
            self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=generation_prompt, tokenize=True, return_dict=True
            )["input_ids"]
        )

    def _system_ids(self, content: str) -> list[int]:
        """The system prompt's tokens as the template renders them (memoized: one per system prompt)."""
        if content not in self._system_cache:
            if len(self._system_cache) >= 64:
                self._system_cache.clear()
            self._system_cache[content] = self._template([{"role": "system", "content": content}], False)
        return self._system_cache[content]

    def encode(self, messages: list[dict], max_new_tokens: int) -> tuple[list[int], int]:
        """Token ids of the chat prompt, and how many leading ones are the system prompt (shared by
        many requests, so their KV is cached). The oldest turns after the system prompt are dropped
        until the prompt fits the context window minus `max_new_tokens` (at most half the window is
        reserved for the answer; the answer is cut where the window ends)."""
        budget = self.context_window - min(max_new_tokens, self.context_window // 2)
        system = [m for m in messages[:1] if m["role"] == "system"]
        turns = messages[len(system) :]
        while True:
            ids = self._template(system + turns)
            if len(ids) <= budget or len(turns) <= 1:
                break
            turns = turns[2:] if len(turns) > 2 else turns[-1:]
        prefix = self._system_ids(system[0]["content"]) if system else []
        shared = len(prefix) if len(ids) <= budget and ids[: len(prefix)] == prefix else 0
        return ids[-budget:], shared

    def submit(
        self,
        request: GenerationRequest,
        emit: Callable[[str], None],
        cancel: threading.Event,
        prefill_only: bool = False,
        now: bool = False,
    ) -> Future:
        """Generate an answer. With `prefill_only`, stop after the first token: if the answer is not
        finished by then, the future's result is a `KVTransfer` for `resume` (in another process), else
        the `GenerationResult`. With `now`, join the batch at once (`Scheduler.submit_now`)."""
        prompt, prefix_len = self.encode(request.messages, request.max_new_tokens)
        max_new = min(request.max_new_tokens, self.context_window - len(prompt))
        job = Job(
            prompt,
            prefix_len,
            request.adapter_version,
            max_new,
            request.temperature,
            request.top_p,
            tuple(request.stop),
            emit,
            cancel,
            export=prefill_only,
        )
        return self._run(job, request, now=now)

    def resume(
        self, request: GenerationRequest, transfer: KVTransfer, emit: Callable[[str], None], cancel: threading.Event
    ) -> Future:
        """Carry on generating a request another process prefilled (`submit(..., prefill_only=True)`)."""
        job = Job(
            transfer.prompt,
            0,
            request.adapter_version,
            transfer.max_new_tokens,
            request.temperature,
            request.top_p,
            tuple(request.stop),
            emit,
            cancel,
            resume=transfer,
        )
        return self._run(job, request, transfer.sent)

    def _run(self, job, request: GenerationRequest, sent: str = "", now: bool = False) -> Future:
        """Submit `job` to the batch (`now`: ahead of the queue); its future's result: the `KVTransfer` it
        exported, if any, else the `GenerationResult` (`sent`: the answer's text emitted before, by
        another process)."""
        parts: list[str] = [sent]
        emit = job.emit

        def collect(text: str) -> None:
            parts.append(text)
            emit(text)

        job.emit = collect
        submitted = self.scheduler.submit_now(job) if now else self.scheduler.submit(job)
        # The job's future keeps this callback: closing over the job would make a reference cycle that
        # only a full garbage collection frees, keeping the job's KV handoff (MBs) alive until then.
        # The job is alive whenever its future completes (the scheduler, or this frame, holds it).
        job_ref, prompt_tokens = weakref.ref(job), len(job.prompt)
        return result_future(
            submitted,
            lambda done: (
                _transfer_of(job_ref)
                or GenerationResult("".join(parts).strip(), request.adapter_version, prompt_tokens, *done)
            ),
        )

    # ---- the Runner interface used by the scheduler ---------------------------------------------

    def start(self, row) -> int:
        """A new request joins: reuse its system prompt's KV if cached. Returns prompt tokens cached."""
        job = row.job
        if job.version != BASE_VERSION and job.version not in self.adapters:
            raise AdapterError(f"adapter {job.version!r} is not loaded")
        if job.resume is not None:  # prefilled in another process: its KV comes along
            from bot.runtime.kv_cache import kv_from_bytes

            self.cache.seed(row.seq, kv_from_bytes(*job.resume.kv, self.device))
            return len(job.prompt)
        if not job.prefix_len:
            return 0
        key = tuple(job.prompt[: job.prefix_len])
        hit = self.prefixes.get(job.version, key)
        if hit is None:
            self._want_prefix[row.seq] = (job.version, key)
            return 0
        self.cache.seed(row.seq, hit)
        return job.prefix_len

    def forward(self, segments):
        """One packed forward pass per adapter version present (usually one); the logits of each
        segment's last token."""
        import torch

        logits = [None] * len(segments)
        groups: dict[str, list[int]] = {}
        for i, segment in enumerate(segments):
            groups.setdefault(segment.row.job.version, []).append(i)
        for version, indices in groups.items():
            out = self._packed_forward([segments[i] for i in indices], version)
            for j, i in enumerate(indices):
                logits[i] = out[j]
        self._remember_prefixes(segments)
        return torch.stack(logits)

    def _packed_forward(self, segments, version: str):
        import torch

        from bot.runtime.lean_forward import lean_forward

        ids = torch.tensor([[t for s in segments for t in s.tokens]], device=self.device)
        positions = torch.tensor([[s.start + k for s in segments for k in range(len(s.tokens))]], device=self.device)
        last = torch.tensor([len(s.tokens) for s in segments], device=self.device).cumsum(0) - 1
        self.cache.prepare(segments)
        names = ["__base__" if version == BASE_VERSION else version] if self.peft else None
        with torch.inference_mode():
            if self.lean is not None:
                return lean_forward(self.model, self.lean, ids, positions, last, self.cache, names)
            model = self.peft if self.peft is not None else self.model
            out = model(
                input_ids=ids,
                position_ids=positions,
                cache=self.cache,
                attention_mask=self._no_mask,
                use_cache=True,
                logits_to_keep=last,
                packed_cache=self.cache,
                **({"adapter_names": names} if names else {}),
            )
        return out.logits[0]

    def _remember_prefixes(self, segments) -> None:
        for segment in segments:
            row = segment.row
            want = self._want_prefix.get(row.seq)
            if want is not None and segment.start + len(segment.tokens) >= row.job.prefix_len:
                self.prefixes.put(*want, self.cache.copy_prefix(row.seq, row.job.prefix_len))
                del self._want_prefix[row.seq]

    def release(self, row) -> None:
        job = row.job
        if row.finish_reason == "transfer":
            job.transfer = KVTransfer(
                job.prompt,
                self.cache.export(row.seq, len(job.prompt)),
                row.last_token,
                list(row.detokenizer.ids),
                row.detokenizer.sent,
                job.max_new_tokens,
            )
        self.cache.release(row.seq)
        self._want_prefix.pop(row.seq, None)

    def rank(self, row) -> int:
        return self.cache.rank(row.seq)

    def logits_for(self, prompt: list[int], version: str = BASE_VERSION):
        """Next-token logits after `prompt`, through the serving path (call it in the scheduler thread)."""
        row = Row(Job(prompt, 0, version, 1, 0.0, 1.0, (), lambda _t: None, threading.Event()), None, seq=-1)
        try:
            self.start(row)
            return self.forward([Segment(row, prompt, 0)])[0]
        finally:
            self.release(row)

    # ---- adapters -------------------------------------------------------------------------------

    def load_adapter(self, version: str, path: Path, probe_tokens: int = PROBE_TOKENS) -> None:
        """Load an adapter under its own name and validate it, ending with a probe prompt that must
        generate `probe_tokens` tokens; refused adapters leave no trace. Blocking: the load runs in the
        scheduler thread between two steps."""
        started = time.perf_counter()
        self.scheduler.call(lambda: self._load_adapter(version, path)).result()
        loaded = time.perf_counter()
        self._probe(version, probe_tokens)
        log.info(
            "adapter %s loaded in %.2f s, probed in %.2f s", version, loaded - started, time.perf_counter() - loaded
        )

    def _load_adapter(self, version: str, path: Path) -> None:
        if version in self.adapters:
            return
        self._check_manifest(version, path)
        try:
            self._load_weights(version, path)
        except Exception as exc:
            self._discard_partial(version)
            raise AdapterError(f"adapter {version} at {path} failed to load: {exc}") from exc
        self.adapters.add(version)
        try:
            self._check_finite(version)
        except AdapterError:
            self._unload(version)
            raise

    def _check_manifest(self, version: str, path: Path) -> None:
        """An adapter with a supportloop manifest must have been trained on this server's base model
        (one without a manifest, made elsewhere, is checked by loading it: modules and shapes must fit)."""
        if manifest_path(path) is None:
            return
        try:
            made_for = (read_manifest(path).get("base_model") or {}).get("id")
        except (ManifestError, AttributeError) as exc:
            raise AdapterError(f"adapter {version} has an unreadable manifest: {exc}") from None
        mine = base_model_id(self.model_path)
        if made_for != mine:
            raise AdapterError(f"adapter {version} was made for base model {made_for}, this server runs {mine}")

    def _load_weights(self, version: str, path: Path) -> None:
        from peft import PeftModel

        if self.peft is None:
            self.peft = PeftModel.from_pretrained(self.model, str(path), adapter_name=version, is_trainable=False)
        else:
            self.peft.load_adapter(str(path), adapter_name=version, is_trainable=False)
        self.peft.eval()

    def _discard_partial(self, version: str) -> None:
        """Undo what a failed load left behind: a half-added adapter, or LoRA layers injected into
        the bare model by a failed first `PeftModel.from_pretrained`."""
        if self.peft is not None:
            if version in self.peft.peft_config:
                self.peft.delete_adapter(version)
            return
        from peft.tuners.tuners_utils import BaseTunerLayer

        for parent in list(self.model.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, BaseTunerLayer):
                    setattr(parent, name, child.get_base_layer())

    def _check_finite(self, version: str) -> None:
        import torch

        for name, param in self.peft.named_parameters():
            if f".{version}." in name and not torch.isfinite(param).all():
                raise AdapterError(f"adapter {version} has non-finite weights in {name}")

    def _probe(self, version: str, tokens: int) -> None:
        """A probe prompt must generate through the batch path before the version serves anyone."""
        probe = GenerationRequest(PROBE_MESSAGES, adapter_version=version, max_new_tokens=tokens)
        try:
            result = self.submit(probe, lambda _text: None, threading.Event(), now=True).result(timeout=120)
        except Exception as exc:
            self.unload_adapter(version)
            raise AdapterError(f"adapter {version} failed the probe prompt: {exc}") from exc
        if result.completion_tokens == 0:
            self.unload_adapter(version)
            raise AdapterError(f"adapter {version} generated nothing for the probe prompt")

    def unload_adapter(self, version: str) -> None:
        """Unload `version` once no running or queued request uses it (blocking; drains first)."""
        while not self.try_unload_adapter(version):
            time.sleep(UNLOAD_POLL_SECONDS)

    def try_unload_adapter(self, version: str) -> bool:
        """Unload `version` if no running or queued request uses it; whether it is gone."""
        return self.scheduler.call(lambda: self._unload(version)).result()

    def _unload(self, version: str) -> bool:
        if self.scheduler.uses(version):
            return False
        if version not in self.adapters:
            return True
        self.adapters.discard(version)
        self.prefixes.drop(version)
        if self.adapters:
            self.peft.delete_adapter(version)
        else:  # the last one: give back the plain base model
            self.model, self.peft = self.peft.unload(), None
        return True
