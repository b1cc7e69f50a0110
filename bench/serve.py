"""Serving throughput: the real server with continuous batching vs naive sequential `generate()`.

Starts `supportloop serve` as a separate process on a free port, then for 1, 4 and 16 concurrent
websocket sessions, each asking the same prompt set (16 DSTC9 support questions, greedy, up to 64 new
tokens) one question after another; in the same run, answers the prompts one by one with
`model.generate()` in this process.
Prints JSON and one summary line: aggregate completion tokens/s, TTFT p50/p95 per level (and the
p95 without each session's first question, which all sessions ask at the same instant), and the
ratio to naive.

    .venv/bin/python bench/serve.py [--prompts 16] [--max-new-tokens 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import live
import websockets

from bot.runtime.base_model import resolve_base_model
from bot.server.settings import Settings

FAQ = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dstc9-faq" / "faq_qa.jsonl"
LEVELS = (1, 4, 16)


def prompts(n: int) -> list[str]:
    rows = [json.loads(line) for line in FAQ.open()]
    step = len(rows) // n
    return [f"{r['entity_name'].title()}: {r['question']}" for r in rows[::step][:n]]


def start_server(max_new_tokens: int, threads: int | None) -> tuple[subprocess.Popen, str]:
    env = {
        "SUPPORTLOOP_DATA_DIR": tempfile.mkdtemp(prefix="supportloop-bench-"),
        "SUPPORTLOOP_RATE_LIMIT": "100000/minute",
        "SUPPORTLOOP_MAX_SESSIONS_PER_CLIENT": "64",
        "SUPPORTLOOP_MAX_NEW_TOKENS": str(max_new_tokens),
    }
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return live.start_server(env)


async def ask(ws_url: str, text: str) -> dict:
    started = time.perf_counter()
    first = None
    async with websockets.connect(ws_url) as ws:
        await ws.send(json.dumps({"type": "user_message", "text": text}))
        while True:
            frame = json.loads(await ws.recv())
            if frame["type"] == "token" and first is None:
                first = time.perf_counter()
            if frame["type"] == "done":
                return {"ttft": first - started, "tokens": frame["completion_tokens"]}
            if frame["type"] == "error":
                raise RuntimeError(frame)


def engine_stats(url: str) -> dict:
    """The server's own accounting from /metrics: time in prefill and decode, steps, rows."""
    wanted = {
        "supportloop_engine_step_seconds": "step_s",
        "supportloop_engine_steps": "steps",
        "supportloop_engine_step_rows": "rows",
        "supportloop_engine_prefill_tokens": "prefill_tokens",
        "supportloop_prefill_worker_steps": "prefill_steps",
        "supportloop_prefill_worker_seconds": "prefill_s",
    }
    stats = {}
    for line in httpx.get(url + "/metrics").text.splitlines():
        name, _, value = line.rpartition(" ")
        if name in wanted:
            stats[wanted[name]] = float(value)
    return stats


def engine(before: dict, after: dict) -> dict:
    """What the engine did during a level: decode-batch steps, their mean time and rows, prompt tokens
    computed, and the prefill worker's steps (0 without one)."""
    delta = {key: after.get(key, 0) - before.get(key, 0) for key in after}
    steps, prefill_steps = delta["steps"], delta.get("prefill_steps", 0)
    return {
        "steps": int(steps),
        "step_ms": round(1000 * delta["step_s"] / max(steps, 1), 1),
        "mean_batch": round(delta["rows"] / max(steps, 1), 1),
        "prefill_tokens": int(delta["prefill_tokens"]),
        "prefill_worker_steps": int(prefill_steps),
        "prefill_worker_step_ms": round(1000 * delta.get("prefill_s", 0) / max(prefill_steps, 1), 1),
    }


async def level(ws_url: str, questions: list[str], sessions: int) -> dict:
    """Every session asks the whole prompt set, one question after the other (each starting at a
    different question), so requests arrive and leave at different times."""
    results: list[dict] = []

    async def session(offset: int) -> None:
        for i in range(len(questions)):
            results.append({**await ask(ws_url, questions[(offset + i) % len(questions)]), "first": i == 0})

    started = time.perf_counter()
    await asyncio.gather(*(session(k) for k in range(sessions)))
    wall = time.perf_counter() - started
    ttfts = sorted(r["ttft"] for r in results)
    steady = sorted(r["ttft"] for r in results if not r["first"])  # without the sessions' simultaneous start
    tokens = sum(r["tokens"] for r in results)
    return {
        "sessions": sessions,
        "requests": len(results),
        "tokens": tokens,
        "wall_s": round(wall, 2),
        "tok_s": round(tokens / wall, 1),
        "ttft_p50_s": round(statistics.median(ttfts), 3),
        "ttft_p95_s": p95(ttfts),
        "ttft_p95_steady_s": p95(steady),
    }


def p95(values: list[float]) -> float | None:
    return round(values[min(len(values) - 1, int(0.95 * len(values)))], 3) if values else None


def naive(questions: list[str], max_new_tokens: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    settings = Settings()
    path = resolve_base_model(settings.base_model, settings.model_cache)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tokens, started = 0, time.perf_counter()
    for q in questions:
        messages = [{"role": "system", "content": settings.system_prompt}, {"role": "user", "content": q}]
        inputs = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        with torch.inference_mode():
            out = model.generate(
                **inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.eos_token_id
            )
        tokens += out.shape[1] - inputs["input_ids"].shape[1]
    wall = time.perf_counter() - started
    return {"requests": len(questions), "tokens": tokens, "wall_s": round(wall, 2), "tok_s": round(tokens / wall, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--levels", type=int, nargs="+", default=list(LEVELS), help="session counts (default 1 4 16)")
    parser.add_argument("--server-threads", type=int, help="torch threads in the server (default: all cores)")
    args = parser.parse_args()
    questions = prompts(args.prompts)
    proc, url = start_server(args.max_new_tokens, args.server_threads)
    ws_url = url.replace("http", "ws") + "/ws/chat"
    try:
        asyncio.run(ask(ws_url, questions[0]))  # warm-up
        levels = []
        for n in args.levels:
            before = engine_stats(url)
            levels.append(asyncio.run(level(ws_url, questions, n)))
            after = engine_stats(url)
            levels[-1].update(engine(before, after))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    base = naive(questions, args.max_new_tokens)
    for entry in levels:
        entry["ratio_to_naive"] = round(entry["tok_s"] / base["tok_s"], 2)
    print(json.dumps({"naive": base, "levels": levels, "max_new_tokens": args.max_new_tokens}, indent=2))
    parts = [
        f"{e['sessions']} sessions {e['tok_s']} tok/s ({e['ratio_to_naive']}x) TTFT p50 {e['ttft_p50_s']} s "
        f"p95 {e['ttft_p95_s']} s"
        for e in levels
    ]
    print(f"serve: naive {base['tok_s']} tok/s; " + "; ".join(parts))


if __name__ == "__main__":
    main()
