"""Offline evaluation of adapters for the gate: greedy answers in batches and perplexity of reference
answers, for several adapters loaded side by side on one base model (PEFT named adapters; the bare
base model is `BASE_VERSION`)."""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

from feedback.registry import BASE_VERSION


@dataclass(frozen=True)
class Item:
    """A question in context and the answer it should get."""

    prompt: list[dict]
    reference: str
    grounded: bool = False  # the prompt holds retrieved passages (as the serving model saw them)


@dataclass(frozen=True)
class Answer:
    text: str
    finished: bool  # False: stopped by the token limit (a runaway answer)


class Evaluator:
    """The base model with named adapters; `answers` and `perplexity` run under any of them."""

    def __init__(self, base_model: Path, device: str, batch_size: int = 16) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device, self.batch_size = device, batch_size
        self.tokenizer = AutoTokenizer.from_pretrained(base_model)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        dtype = torch.bfloat16 if device == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
        self.model = AutoModelForCausalLM.from_pretrained(base_model, dtype=dtype).to(device).eval()
        self.names: set[str] = set()

    def load(self, name: str, folder: Path) -> None:
        """Load the adapter in `folder` as `name`; raises when it does not load."""
        from peft import PeftModel

        if not self.names:
            self.model = PeftModel.from_pretrained(self.model, str(folder), adapter_name=name).eval()
        else:
            self.model.load_adapter(str(folder), adapter_name=name)
        self.names.add(name)

    def _using(self, name: str):
        if name == BASE_VERSION:
            return self.model.disable_adapter() if self.names else nullcontext()
        self.model.set_adapter(name)
        return nullcontext()

    def _chat(self, prompt: list[dict]) -> str:
        return self.tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)

    def answers(self, name: str, items: list[Item], max_new_tokens: int) -> list[Answer]:
        """Greedy answers of adapter `name`, in `items` order (batched by prompt length)."""
        order = sorted(range(len(items)), key=lambda i: len(self._chat(items[i].prompt)))
        out: dict[int, Answer] = {}
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            for i, answer in zip(batch, self._generate(name, [items[i].prompt for i in batch], max_new_tokens)):
                out[i] = answer
        return [out[i] for i in range(len(items))]

    def _generate(self, name: str, prompts: list[list[dict]], max_new_tokens: int) -> list[Answer]:
        import torch

        self.tokenizer.padding_side = "left"
        enc = self.tokenizer(
            [self._chat(p) for p in prompts], return_tensors="pt", padding=True, add_special_tokens=False
        ).to(self.device)
        with torch.inference_mode(), self._using(name):
            out = self.model.generate(
                **enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=self.tokenizer.pad_token_id
            )
        eos = self.model.generation_config.eos_token_id
        eos = set(eos if isinstance(eos, list) else [eos])
        answers = []
        for row in out[:, enc["input_ids"].shape[1] :].tolist():
            finished = any(t in eos for t in row)
            row = row[: next((i for i, t in enumerate(row) if t in eos), len(row))]
            answers.append(Answer(self.tokenizer.decode(row, skip_special_tokens=True).strip(), finished))
        return answers

    def perplexity(self, name: str, items: list[Item]) -> float:
        """exp(mean negative log-likelihood) of the reference answers' tokens, given their prompts."""
        total, count = 0.0, 0
        for start in range(0, len(items), self.batch_size):
            nll, tokens = self._nll(name, items[start : start + self.batch_size])
            total, count = total + nll, count + tokens
        return math.exp(min(total / max(count, 1), 50.0))

    def _nll(self, name: str, items: list[Item]) -> tuple[float, int]:
        import torch

        rows, labels = [], []
        for item in items:
            prompt = self.tokenizer(self._chat(item.prompt), add_special_tokens=False)["input_ids"]
            answer = self.tokenizer(item.reference + (self.tokenizer.eos_token or ""), add_special_tokens=False)[
                "input_ids"
            ]
            rows.append(prompt + answer)
            labels.append([-100] * len(prompt) + answer)
        width = max(map(len, rows))
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=self.device)
        target = torch.tensor([r + [-100] * (width - len(r)) for r in labels], device=self.device)
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=self.device)
        with torch.inference_mode(), self._using(name):
            logits = self.model(input_ids=ids, attention_mask=mask).logits.float()
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), target[:, 1:].reshape(-1), ignore_index=-100, reduction="sum"
        )
        return float(loss), int((target[:, 1:] != -100).sum())


def open_evaluator(
    base_model: Path, device: str, adapters: dict[str, Path | None], log: Callable[[str], None]
) -> tuple[Evaluator, dict[str, str]]:
    """An evaluator with `adapters` loaded (None = the base model). An adapter that does not load is
    reported and left out; returns the evaluator and name → why it was left out."""
    evaluator, failed = Evaluator(base_model, device), {}
    for name, folder in adapters.items():
        if folder is None:
            continue
        try:
            evaluator.load(name, folder)
        except Exception as exc:
            failed[name] = f"{type(exc).__name__}: {exc}"
            log(f"gate: could not load adapter {name} from {folder}: {failed[name]}")
    return evaluator, failed
