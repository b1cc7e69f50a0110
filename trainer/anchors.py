"""Anchor examples: the base model's own answers to everyday support questions, mixed into SFT.

A small model fine-tuned on a handful of corrections over-learns them: after one correction about
check-in times, SmolLM2 answered "Where is my order?" with "Your order is at 3:30pm - 9:00pm."
Training on the base model's answers to unrelated questions alongside (rehearsal by
self-distillation) teaches the adapter to leave other answers alone. The answers are generated once
per base model and system prompt and cached in the registry's `.anchors/` folder. The questions differ from the
gate's generic set, so the gate still measures what the anchors did not train."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

from trainer.evaluate import Evaluator, Item

ANCHORS_DIR = ".anchors"  # inside the registry folder
QUESTIONS = [
    "Hi, can you help me?",
    "How do I update my email address?",
    "My package arrived damaged. What should I do?",
    "Can I cancel my subscription?",
    "How long does delivery take?",
    "Do you have a student discount?",
    "I was charged twice. Can you fix it?",
    "How do I change my booking?",
    "Is my personal data safe with you?",
    "Can I speak to a manager?",
    "What are your opening hours?",
    "Where can I find my invoice?",
    "The app keeps crashing. Any advice?",
    "Can I pay in instalments?",
    "How do I delete my account?",
    "Thanks, that's all I needed!",
    "Do you offer gift cards?",
    "Can I return an item without a receipt?",
    "How do I apply a promo code?",
    "Is there a phone number I can call?",
    "Why was my card declined?",
    "Can I change the delivery address after ordering?",
    "Do you have a loyalty programme?",
    "What's your returns policy?",
]


def _cache_file(folder: Path, base_id: str, system_prompt: str, count: int, max_new_tokens: int) -> Path:
    key = hashlib.sha256(json.dumps([base_id, system_prompt, QUESTIONS[:count], max_new_tokens]).encode()).hexdigest()
    return Path(folder) / ANCHORS_DIR / f"{key[:16]}.json"


def anchor_records(
    *,
    base_model: Path,
    base_id: str,
    device: str,
    system_prompt: str,
    count: int,
    cache_dir: Path,
    log: Callable[[str], None],
    max_new_tokens: int = 96,
) -> list[dict]:
    """`count` SFT records: the base model's greedy answers to everyday support questions (cached)."""
    if count <= 0:
        return []
    cache = _cache_file(cache_dir, base_id, system_prompt, count, max_new_tokens)
    if cache.exists():
        return json.loads(cache.read_text())
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    items = [Item(system + [{"role": "user", "content": q}], "") for q in QUESTIONS[:count]]
    log(f"anchors: answering {len(items)} everyday questions with the base model (once per base model)")
    answers = Evaluator(base_model, device).answers("base", items, max_new_tokens)
    records = [
        {"prompt": i.prompt, "completion": [{"role": "assistant", "content": a.text}]}
        for i, a in zip(items, answers)
        if a.text and a.finished
    ]
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(records))
    return records
