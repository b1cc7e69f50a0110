"""The `Generator` protocol and its Hugging Face implementation.

A generator is blocking and single-threaded by contract: `bot.engine.Engine` owns it and calls it
from one worker thread, so the model, its adapters and the tokenizer are never used concurrently.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from bot.basemodel import resolve_device
from feedback.models import BASE_VERSION

log = logging.getLogger(__name__)

PROBE_MESSAGES = [{"role": "user", "content": "Hello, can you help me?"}]


class AdapterError(RuntimeError):
    """An adapter was refused; the message says why. The live version keeps serving."""


@dataclass(frozen=True)
class GenerationRequest:
    messages: list[dict]
    adapter_version: str = BASE_VERSION
    max_new_tokens: int = 128
    temperature: float = 0.0


@dataclass(frozen=True)
class GenerationResult:
    text: str
    adapter_version: str
    prompt_tokens: int
    completion_tokens: int


class Generator(Protocol):
    def load(self) -> None: ...

    def generate(self, request: GenerationRequest, emit: Callable[[str], None],
                 cancel: threading.Event) -> GenerationResult: ...

    def load_adapter(self, version: str, path: Path) -> None: ...

    def unload_adapter(self, version: str) -> None: ...


class Utf8Streamer:
    """A `generate()` streamer that emits text deltas only at UTF-8-complete boundaries: a byte-level
    token that ends inside a multi-byte character decodes to U+FFFD and is held back until completed."""

    def __init__(self, tokenizer, emit: Callable[[str], None]) -> None:
        self.tokenizer, self.emit = tokenizer, emit
        self.token_ids: list[int] = []
        self.sent = ""
        self._prompt_seen = False

    def put(self, value) -> None:
        if not self._prompt_seen:  # generate() first pushes the prompt
            self._prompt_seen = True
            return
        self.token_ids.extend(int(t) for t in value.reshape(-1).tolist())
        self._flush(final=False)

    def end(self) -> None:
        self._flush(final=True)

    def _flush(self, final: bool) -> None:
        text = self.tokenizer.decode(self.token_ids, skip_special_tokens=True)
        if not final and text.endswith("\ufffd"):
            return
        if text.startswith(self.sent) and len(text) > len(self.sent):
            self.emit(text[len(self.sent):])
            self.sent = text


class _CancelCriteria:
    def __init__(self, cancel: threading.Event) -> None:
        self.cancel = cancel

    def __call__(self, input_ids, scores, **kwargs):
        import torch
        return torch.full((input_ids.shape[0],), self.cancel.is_set(), dtype=torch.bool)


class HFGenerator:
    """A causal LM from a local checkpoint folder, with LoRA adapters loaded side by side by version."""

    def __init__(self, model_path: Path, device: str = "auto") -> None:
        self.model_path = Path(model_path)
        self.device_setting = device
        self.model = self.tokenizer = None
        self.peft = None  # the PeftModel wrapping `model` once an adapter is loaded
        self.adapters: set[str] = set()

    def load(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = resolve_device(self.device_setting)
        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        model = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=dtype)
        self.model = model.to(self.device).eval()
        self.context_window = int(getattr(model.config, "max_position_embeddings", 2048) or 2048)

    def _encode(self, messages: list[dict], max_new_tokens: int) -> dict:
        """Token ids of the chat prompt; the oldest turns after the system prompt are dropped until
        the prompt fits the context window minus `max_new_tokens`."""
        budget = self.context_window - max_new_tokens
        system = [m for m in messages[:1] if m["role"] == "system"]
        turns = messages[len(system):]
        while True:
            encoded = self.tokenizer.apply_chat_template(system + turns, add_generation_prompt=True,
                                                         return_tensors="pt", return_dict=True)
            if encoded["input_ids"].shape[1] <= budget or len(turns) <= 1:
                break
            turns = turns[2:] if len(turns) > 2 else turns[-1:]
        input_ids = encoded["input_ids"][:, -budget:]
        return {"input_ids": input_ids.to(self.device),
                "attention_mask": encoded["attention_mask"][:, -budget:].to(self.device)}

    @contextmanager
    def _serving(self, version: str):
        """The model to generate with for `version`; 'base' runs with every adapter disabled."""
        if version == BASE_VERSION:
            with self.peft.disable_adapter() if self.peft is not None else nullcontext():
                yield self.model
            return
        if version not in self.adapters:
            raise AdapterError(f"adapter {version!r} is not loaded")
        self.peft.set_adapter(version)
        yield self.peft

    def generate(self, request: GenerationRequest, emit: Callable[[str], None],
                 cancel: threading.Event) -> GenerationResult:
        import torch

        inputs = self._encode(request.messages, request.max_new_tokens)
        streamer = Utf8Streamer(self.tokenizer, emit)
        sampling = ({"do_sample": True, "temperature": request.temperature}
                    if request.temperature > 0 else {"do_sample": False})
        with self._serving(request.adapter_version) as model, torch.inference_mode():
            model.generate(**inputs, max_new_tokens=request.max_new_tokens, streamer=streamer,
                           stopping_criteria=[_CancelCriteria(cancel)], pad_token_id=self._pad_id(), **sampling)
        return GenerationResult(text=streamer.sent.strip(), adapter_version=request.adapter_version,
                                prompt_tokens=int(inputs["input_ids"].shape[1]),
                                completion_tokens=len(streamer.token_ids))

    def _pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return self.tokenizer.eos_token_id if pad is None else pad

    def load_adapter(self, version: str, path: Path) -> None:
        """Load and validate an adapter under its own name; on any failure it is removed again."""
        if version in self.adapters:
            return
        try:
            self._load_weights(version, path)
        except Exception as exc:  # noqa: BLE001 — any load failure is a refusal, with its reason
            self._discard_partial(version)
            raise AdapterError(f"adapter {version} at {path} failed to load: {exc}") from exc
        self.adapters.add(version)
        try:
            self._validate(version)
        except AdapterError:
            self.unload_adapter(version)
            raise

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

    def _validate(self, version: str) -> None:
        import torch

        for name, param in self.peft.named_parameters():
            if f".{version}." in name and not torch.isfinite(param).all():
                raise AdapterError(f"adapter {version} has non-finite weights in {name}")
        probe = GenerationRequest(PROBE_MESSAGES, adapter_version=version, max_new_tokens=8)
        result = self.generate(probe, lambda _text: None, threading.Event())
        if result.completion_tokens == 0:
            raise AdapterError(f"adapter {version} generated nothing for the probe prompt")

    def unload_adapter(self, version: str) -> None:
        if version not in self.adapters:
            return
        self.adapters.discard(version)
        if self.adapters:
            self.peft.delete_adapter(version)
        else:  # the last one: give back the plain base model
            self.model, self.peft = self.peft.unload(), None
