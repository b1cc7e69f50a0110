"""Benchmark of the whole feedback loop on the real model.

Serves supportloop on a real port, asks N DSTC9 questions over websockets (plus N unrelated held-out
ones), approves the reference answers as staff corrections, runs `supportloop train`, waits for the
server to swap, and asks again. Prints JSON and a one-line summary: answer latency, training time,
swap latency (train exit → server serving the new version), and overlap with the reference before
and after, on the corrected and on the held-out questions.

    .venv/bin/python bench/loop.py --corrections 8
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import httpx
import live
import uvicorn

from bot.server.app import create_app
from bot.server.settings import Settings
from trainer.metrics import overlap_f1


def serve(settings: Settings) -> tuple[uvicorn.Server, str]:
    port = live.free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning", ws="websockets-sansio")
    )
    threading.Thread(target=server.run, daemon=True).start()
    url = f"http://127.0.0.1:{port}"
    wait(lambda: _ready(url) is not None, 600)
    return server, url


def _ready(url: str) -> str | None:
    try:
        response = httpx.get(url + "/readyz")
    except httpx.HTTPError:
        return None
    return response.json().get("adapter_version") if response.status_code == 200 else None


def wait(predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("timed out")
        time.sleep(0.05)


def scores(answers: list[dict], pairs: list[dict]) -> float:
    return statistics.mean(overlap_f1(a["text"], p["reference"]) for a, p in zip(answers, pairs))


def run(n: int, seed: int) -> dict:
    corrected, held_out = live.pick_pairs(n, n, seed)
    data_dir = Path(tempfile.mkdtemp(prefix="supportloop-bench-"))
    env = {**os.environ, "SUPPORTLOOP_DATA_DIR": str(data_dir)}
    # the adapter alone: no knowledge base, no correction memory (they would answer from the corrections at once)
    settings = Settings(data_dir=data_dir, adapter_poll_seconds=0.25, max_new_tokens=48, kb=False, memory=False)
    server, url = serve(settings)
    ws_url = url.replace("http", "ws") + "/ws/chat"
    before = [live.ask(ws_url, p["question"]) for p in corrected + held_out]
    token = live.staff_token(env)
    for answer, pair in zip(before, corrected):
        live.approve(url, token, answer["message_id"], pair["reference"])
    started = time.perf_counter()
    out = subprocess.run([live.CLI, "train", "--quiet"], env=env, capture_output=True, text=True, check=True).stdout
    trained = time.perf_counter()
    version = out.split("new adapter ")[1].split()[0]
    wait(lambda: _ready(url) == version, 120)
    swapped = time.perf_counter()
    after = [live.ask(ws_url, p["question"]) for p in corrected + held_out]
    server.should_exit = True
    assert all(a["adapter_version"] == version for a in after)
    return {
        "corrections": n,
        "version": version,
        "train_s": round(trained - started, 1),
        "swap_s": round(swapped - trained, 2),
        "ttft_p50_s": round(statistics.median(a["ttft_s"] for a in before + after), 3),
        "answer_p50_s": round(statistics.median(a["total_s"] for a in before + after), 3),
        "corrected_overlap_before": round(scores(before[:n], corrected), 3),
        "corrected_overlap_after": round(scores(after[:n], corrected), 3),
        "held_out_overlap_before": round(scores(before[n:], held_out), 3),
        "held_out_overlap_after": round(scores(after[n:], held_out), 3),
        "examples": [
            {"question": p["question"], "reference": p["reference"], "before": b["text"], "after": a["text"]}
            for p, b, a in list(zip(corrected, before, after))[:3]
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corrections", type=int, default=8, help="questions to correct (default 8)")
    parser.add_argument("--seed", type=int, default=0, help="which DSTC9 pairs (default 0)")
    args = parser.parse_args()
    result = run(args.corrections, args.seed)
    print(json.dumps(result, indent=2))
    print(
        f"loop: {result['corrections']} corrections → {result['version']} in {result['train_s']} s train "
        f"+ {result['swap_s']} s swap; overlap on corrected {result['corrected_overlap_before']:.2f} → "
        f"{result['corrected_overlap_after']:.2f}, held-out {result['held_out_overlap_before']:.2f} → "
        f"{result['held_out_overlap_after']:.2f}; answer p50 {result['answer_p50_s']} s, TTFT p50 {result['ttft_p50_s']} s"
    )


if __name__ == "__main__":
    main()
