"""Hot-swap under load: the real server with SmolLM2, 16 websocket sessions chatting continuously,
first without swaps, then while promotions happen through the admin API.

Adapters: one LoRA adapter per promotion, with random (non-zero) weights, made on the spot for the real
base model with a supportloop manifest. Each is registered as a candidate two promotions (`--ahead`)
before its own, as a training round leaves its candidate for review, so the server loads and validates
it ahead and the promotion only flips the version; `--cold` registers each just before its promotion
instead (loaded, validated and probed on promotion).

Measures, per promotion, the time from sending the promote request to the first token on the new
version of a question asked as soon as the API replies (and, as context, of the first such answer among
the 16 customers, who each ask again only once their previous answer is done), and the API's own reply
time; failed requests (error frames, broken connections) and garbled ones (empty text or U+FFFD), and
answers made by a version that was not the active one when they were asked or the one just before;
TTFT p99 with and without swaps. Prints JSON and one summary line.

    .venv/bin/python bench/swap.py [--sessions 16] [--promotions 10] [--gap 4] [--baseline 20] [--ahead 2 | --cold]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import live
import websockets

from bot.runtime.base_model import base_model_id, resolve_base_model
from bot.server.settings import Settings

FAQ = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dstc9-faq" / "faq_qa.jsonl"


def make_adapters(data_dir: Path, base: Path, count: int) -> list[str]:
    """`count` random LoRA adapters for `base` in the adapter folder at `data_dir` (not registered yet)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    names = []
    for i in range(count):
        torch.manual_seed(i)
        model = get_peft_model(
            AutoModelForCausalLM.from_pretrained(base),
            LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
        )
        name = f"v{i + 1}-bench"
        model.save_pretrained(data_dir / "adapters" / name)
        (data_dir / "adapters" / name / "manifest.json").write_text(
            json.dumps({"base_model": {"id": base_model_id(base)}})
        )
        names.append(name)
    return names


def register(store_url: str, data_dir: Path, version: str, base_id: str) -> None:
    """Register a made adapter as a candidate, as a training round whose candidate awaits promotion does."""
    from feedback import repo
    from feedback.db import open_store

    store = open_store(store_url)
    try:
        with store.session() as session:
            repo.register_adapter(
                session,
                version=version,
                path=str(data_dir / "adapters" / version),
                base_model=base_id,
                parent=None,
                dataset_hash=None,
                metrics={},
                activate=False,
            )
    finally:
        store.dispose()


async def ask(ws_url: str, question: str) -> dict:
    """One question in a new session: when it was sent, its first token, the answer and its version."""
    entry = {"sent": time.monotonic(), "first": None, "version": None, "ok": False, "text": ""}
    try:
        async with websockets.connect(ws_url) as ws:
            await ws.send(json.dumps({"type": "user_message", "text": question}))
            while True:
                frame = json.loads(await ws.recv())
                if frame["type"] == "token":
                    entry["first"] = entry["first"] or time.monotonic()
                    entry["text"] += frame["text"]
                elif frame["type"] in ("done", "error"):
                    entry.update(
                        ok=frame["type"] == "done", version=frame.get("adapter_version"), error=frame.get("code")
                    )
                    break
    except (OSError, websockets.WebSocketException) as exc:
        entry["error"] = type(exc).__name__
    return entry


async def chat(ws_url: str, questions: list[str], offset: int, stop: asyncio.Event, log: list[dict]) -> None:
    """One customer asking question after question until `stop`, recording each answer."""
    i = offset
    while not stop.is_set():
        log.append(await ask(ws_url, questions[i % len(questions)]))
        i += 1


async def promote(url: str, token: str, version: str) -> dict:
    async with httpx.AsyncClient(timeout=300) as client:
        sent = time.monotonic()
        reply = await client.post(
            f"{url}/api/admin/adapters/{version}/promote", headers={"Authorization": f"Bearer {token}"}
        )
        return {"version": version, "sent": sent, "replied": time.monotonic(), "status": reply.status_code}


async def run(url: str, token: str, versions: list[str], args, ahead: Callable[[str], None]) -> dict:
    """Chat in `args.sessions` sessions; after `args.baseline` s, promote `versions` one by one, `args.gap` s
    apart. `ahead(version)` registers a version: `args.ahead` promotions ahead (servers preload it, as
    they do a new round's candidate), or with `args.cold` just before its promotion (loaded when promoted)."""
    questions = [json.loads(line)["question"] for line in FAQ.open()][::97][:32]
    ws_url = url.replace("http", "ws") + "/ws/chat"
    stop, log = asyncio.Event(), []
    lead = 0 if args.cold else args.ahead
    for version in versions[:lead]:
        await asyncio.to_thread(ahead, version)
    sessions = [asyncio.create_task(chat(ws_url, questions, k * 2, stop, log)) for k in range(args.sessions)]
    await asyncio.sleep(args.baseline)
    swaps_from = time.monotonic()
    promotions, asked = [], []
    for n, version in enumerate(versions):
        if args.cold:
            await asyncio.to_thread(ahead, version)
        promotions.append(await promote(url, token, version))
        asked.append(asyncio.create_task(ask(ws_url, questions[n])))  # a customer asking right after the promotion
        if lead and n + lead < len(versions):
            await asyncio.to_thread(ahead, versions[n + lead])
        await asyncio.sleep(args.gap)
    stop.set()
    await asyncio.gather(*sessions)
    for promotion, entry in zip(promotions, await asyncio.gather(*asked)):
        promotion["asked_after"] = entry
    return summarize(log, promotions, swaps_from)


def summarize(log: list[dict], promotions: list[dict], swaps_from: float) -> dict:
    """Per promotion, two latencies from sending the promote request: to the first token of the question
    asked right after its reply (on the new version), and to the first token on the new version among
    the 16 customers' questions (which also waits for one of them to finish an answer and ask again)."""

    def p99(values: list[float]) -> float | None:
        values = sorted(values)
        return round(values[min(len(values) - 1, int(0.99 * len(values)))], 3) if values else None

    def spread(values: list[float | None]) -> tuple[float | None, float | None]:
        """p50 and max; a promotion without a measurement (None) counts as the worst: past the max (None)."""
        measured = sorted(x for x in values if x is not None) + [None] * values.count(None)
        return (measured[len(measured) // 2], measured[-1]) if measured else (None, None)

    asked = [p["asked_after"] for p in promotions]
    latencies = [
        round(e["first"] - p["sent"], 3) if e["first"] and e["version"] == p["version"] else None
        for p, e in zip(promotions, asked)
    ]
    in_sessions = []
    for p in promotions:
        firsts = [e["first"] for e in log if e["version"] == p["version"] and e["sent"] >= p["sent"] and e["first"]]
        in_sessions.append(round(min(firsts) - p["sent"], 3) if firsts else None)
    every = log + asked
    failed = [e for e in every if not e["ok"]]
    garbled = [e for e in every if e["ok"] and (not e["text"].strip() or "\ufffd" in e["text"])]
    wrong = [e for e in every if e["ok"] and e["version"] not in possible_versions(e, promotions)]
    ttft = lambda during: [e["first"] - e["sent"] for e in log if e["first"] and (e["sent"] >= swaps_from) == during]  # noqa: E731
    (p50, worst), (sessions_p50, sessions_worst) = spread(latencies), spread(in_sessions)
    return {
        "requests": len(every),
        "promotions": len(promotions),
        "promote_http": [p["status"] for p in promotions],
        "promote_reply_s": [round(p["replied"] - p["sent"], 3) for p in promotions],
        "promotion_to_first_token_s": latencies,
        "latency_p50_s": p50,
        "latency_max_s": worst,
        "promotion_to_first_token_in_sessions_s": in_sessions,
        "sessions_latency_p50_s": sessions_p50,
        "sessions_latency_max_s": sessions_worst,
        "sessions_never_on_new_version": in_sessions.count(None),
        "failed": len(failed),
        "garbled": len(garbled),
        "failures": [e.get("error") for e in failed][:10],
        "wrong_version": len(wrong),
        "ttft_p99_without_swaps_s": p99(ttft(False)),
        "ttft_p99_during_swaps_s": p99(ttft(True)),
    }


def possible_versions(entry: dict, promotions: list[dict]) -> set[str]:
    """The versions the server may have chosen for a request: the one serving when it was sent, and any
    that began serving between then and its first token (a promotion serves before its API reply)."""
    until = entry["first"] or entry["sent"]
    before = [p["version"] for p in promotions if p["replied"] <= entry["sent"]]
    during = {p["version"] for p in promotions if p["sent"] <= until and p["replied"] > entry["sent"]}
    return {before[-1] if before else "base"} | during


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=16)
    parser.add_argument("--promotions", type=int, default=10)
    parser.add_argument("--gap", type=float, default=4.0, help="seconds between promotions")
    parser.add_argument("--baseline", type=float, default=20.0, help="seconds of chat before the first promotion")
    parser.add_argument(
        "--ahead",
        type=int,
        default=2,
        help="register each version this many promotions "
        "before its own (the server preloads the newest candidates: SUPPORTLOOP_MAX_LOADED_ADAPTERS - 2)",
    )
    parser.add_argument(
        "--cold",
        action="store_true",
        help="register each version just before its promotion, "
        "so that it is loaded and validated on promotion instead of ahead",
    )
    args = parser.parse_args()
    data_dir = Path(tempfile.mkdtemp(prefix="supportloop-swap-"))
    env = {
        "SUPPORTLOOP_DATA_DIR": str(data_dir),
        "SUPPORTLOOP_RATE_LIMIT": "100000/minute",
        "SUPPORTLOOP_MAX_SESSIONS_PER_CLIENT": "64",
        "SUPPORTLOOP_MAX_NEW_TOKENS": "48",
    }
    token = live.staff_token(env)
    settings = Settings()
    base = resolve_base_model(settings.base_model, settings.model_cache)
    versions = make_adapters(data_dir, base, args.promotions)
    proc, url = live.start_server(env)
    try:
        result = asyncio.run(
            run(
                url,
                token,
                versions,
                args,
                lambda v: register(f"sqlite:///{data_dir / 'supportloop.db'}", data_dir, v, base_model_id(base)),
            )
        )
        result["mode"] = "cold" if args.cold else f"registered {args.ahead} promotion(s) ahead"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    print(json.dumps(result, indent=2))
    print(
        f"swap ({result['mode']}): {result['promotions']} promotions under {args.sessions} sessions: promotion → first token on the new "
        f"version p50 {result['latency_p50_s']} s, max {result['latency_max_s']} s (a question asked right after; "
        f"in the sessions p50 {result['sessions_latency_p50_s']} s, max {result['sessions_latency_max_s']} s); {result['failed']} failed, "
        f"{result['garbled']} garbled, {result['wrong_version']} on a wrong version of {result['requests']} requests; "
        f"TTFT p99 {result['ttft_p99_without_swaps_s']} s without swaps, {result['ttft_p99_during_swaps_s']} s during swaps"
    )


if __name__ == "__main__":
    main()
