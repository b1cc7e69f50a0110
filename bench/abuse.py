"""Abuse: 15 well-behaved customers keep their TTFT while one client address floods the real server.

The real `supportloop serve` with SmolLM2 on loopback, default settings but answers of at most 64 tokens
(as `bench/serve.py`). 15 customers, each from its own address (`X-Forwarded-For`, trusted from loopback
as behind a proxy), hold conversations of 3 DSTC9 questions one after another, reading each answer for
4 s: a steady load (longer conversations make every prompt longer, and TTFT with it). The flooder uses one address: as many sockets as it may
open (`SUPPORTLOOP_MAX_SESSIONS_PER_CLIENT`, 20), each sending its next message the moment the previous one
is answered or refused (0.1 s after a refusal). Three runs: the customers alone; with the flood; with the
flood and the fair share off (`SUPPORTLOOP_FAIR_SHARE=false`: first come, first served), to show what it buys.
Target: the customers' TTFT p95 with the flood within 1.5× of alone.

    python bench/abuse.py [--seconds 60]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time

import live
import websockets

CUSTOMERS, FLOOD_SOCKETS, THINK_S, TURNS = 15, 20, 4.0, 3


def _questions() -> list[str]:
    chosen, others = live.pick_pairs(60, 60)
    return [p["question"] for p in chosen + others]


async def _answer(ws, text: str) -> tuple[float | None, str]:
    """(TTFT in seconds or None, the outcome: done or an error code) of one message."""
    started, first = time.perf_counter(), None
    await ws.send(json.dumps({"type": "user_message", "text": text}))
    while True:
        frame = json.loads(await ws.recv())
        if frame["type"] == "token" and first is None:
            first = time.perf_counter() - started
        if frame["type"] in ("done", "error"):
            return first, frame.get("code", "done")


async def customer(url: str, number: int, questions: list[str], until: float, ttfts: list, outcomes: list) -> None:
    """Conversations of `TURNS` questions, one after another, until `until`."""
    headers, turn = {"X-Forwarded-For": f"198.51.100.{number + 1}"}, 0
    while time.monotonic() < until:
        async with websockets.connect(url, additional_headers=headers, max_size=None) as ws:
            for _ in range(TURNS):
                ttft, outcome = await _answer(ws, questions[(number * 7 + turn) % len(questions)])
                outcomes.append(outcome)
                if outcome == "done" and ttft is not None:
                    ttfts.append(ttft)
                turn += 1
                await asyncio.sleep(THINK_S)  # reading the answer
                if time.monotonic() >= until:
                    return


async def flooder(url: str, until: float, outcomes: list) -> None:
    async with websockets.connect(url, additional_headers={"X-Forwarded-For": "203.0.113.66"}, max_size=None) as ws:
        while time.monotonic() < until:
            _, outcome = await _answer(ws, "Tell me everything about every hotel you know, in detail.")
            outcomes.append(outcome)
            if outcome != "done":
                await asyncio.sleep(0.1)


async def load(url: str, seconds: float, flood: bool) -> dict:
    ws_url = url.replace("http", "ws") + "/ws/chat"
    questions, until = _questions(), time.monotonic() + seconds
    ttfts: list[float] = []
    outcomes: list[str] = []
    flood_outcomes: list[str] = []
    tasks = [customer(ws_url, i, questions, until, ttfts, outcomes) for i in range(CUSTOMERS)]
    if flood:
        tasks += [flooder(ws_url, until, flood_outcomes) for _ in range(FLOOD_SOCKETS)]
    await asyncio.gather(*tasks)
    return {
        "answers": len(ttfts),
        "customer_errors": len([o for o in outcomes if o != "done"]),
        "ttft_p50_ms": round(statistics.median(ttfts) * 1000, 1),
        "ttft_p95_ms": round(statistics.quantiles(ttfts, n=20)[-1] * 1000, 1),
        "flood_answered": flood_outcomes.count("done"),
        "flood_refused": {code: flood_outcomes.count(code) for code in sorted(set(flood_outcomes)) if code != "done"},
    }


def run(name: str, seconds: float, flood: bool, env: dict[str, str]) -> dict:
    with tempfile.TemporaryDirectory() as data:
        settings = {"SUPPORTLOOP_DATA_DIR": data, "SUPPORTLOOP_MAX_NEW_TOKENS": "64", **env}
        proc, url = live.start_server(settings, "--no-access-log")
        try:
            result = asyncio.run(load(url, seconds, flood))
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    return {"run": name, **result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    runs = [
        run("alone", args.seconds, False, {}),
        run("flood", args.seconds, True, {}),
        run("flood_without_fair_share", args.seconds, True, {"SUPPORTLOOP_FAIR_SHARE": "false"}),
    ]
    alone = runs[0]["ttft_p95_ms"]
    for r in runs:
        r["ttft_p95_vs_alone"] = round(r["ttft_p95_ms"] / alone, 2)
    met = runs[1]["ttft_p95_vs_alone"] <= 1.5 and runs[1]["customer_errors"] == 0
    print(json.dumps({"runs": runs, "target_met": met}, indent=2))
    print(
        "abuse: 15 customers' TTFT p95 "
        + ", ".join(f"{r['run']} {r['ttft_p95_ms']:.0f} ms (×{r['ttft_p95_vs_alone']})" for r in runs)
        + f"; flood answered {runs[1]['flood_answered']}, refused {sum(runs[1]['flood_refused'].values())}; "
        f"customer errors {runs[1]['customer_errors']}; target ×1.5: {'met' if met else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
