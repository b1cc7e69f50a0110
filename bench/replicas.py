"""Promotions across replicas: two real servers (SmolLM2) on one PostgreSQL store, each with a few
customers chatting; versions are promoted through the first server's admin API, and the second learns
of each through LISTEN/NOTIFY. Measures, per promotion, the time from sending the promote request
until the second server reports the new version (`/readyz`, polled every 10 ms), and until the first
token on the new version of a question asked on the second server as soon as the API replies. Versions
are registered two promotions ahead (both servers preload them). Prints JSON and one summary line.

    .venv/bin/python bench/replicas.py [--promotions 10] [--gap 3] [--sessions 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

import httpx
import live
from swap import FAQ, ask, chat, make_adapters, promote, register

from bot.runtime.base_model import base_model_id, resolve_base_model
from bot.server.settings import Settings

AHEAD = 2


async def reports(url: str, version: str, timeout: float = 30) -> float | None:
    """When the server at `url` first reports serving `version` (time.monotonic()), or None."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=5) as client:
        while time.monotonic() < deadline:
            if (await client.get(url + "/readyz")).json().get("adapter_version") == version:
                return time.monotonic()
            await asyncio.sleep(0.01)
    return None


async def run(urls: list[str], token: str, versions: list[str], args, ahead) -> dict:
    questions = [json.loads(line)["question"] for line in FAQ.open()][::97][:32]
    ws = [u.replace("http", "ws") + "/ws/chat" for u in urls]
    stop, log = asyncio.Event(), []
    for version in versions[:AHEAD]:
        await asyncio.to_thread(ahead, version)
    sessions = [asyncio.create_task(chat(ws[k % 2], questions, k, stop, log)) for k in range(2 * args.sessions)]
    await asyncio.sleep(5)
    rows = []
    for n, version in enumerate(versions):
        seen = asyncio.create_task(reports(urls[1], version))
        promoted = await promote(urls[0], token, version)
        answer = await ask(ws[1], questions[n])
        replica = await seen
        rows.append(
            {
                "version": version,
                "status": promoted["status"],
                "replica_serves_s": round(replica - promoted["sent"], 3) if replica else None,
                "replica_first_token_s": round(answer["first"] - promoted["sent"], 3)
                if answer["first"] and answer["version"] == version
                else None,
            }
        )
        if n + AHEAD < len(versions):
            await asyncio.to_thread(ahead, versions[n + AHEAD])
        await asyncio.sleep(args.gap)
    stop.set()
    await asyncio.gather(*sessions)
    return summarize(rows, log)


def summarize(rows: list[dict], log: list[dict]) -> dict:
    def spread(key: str) -> tuple[float | None, float | None]:
        values = sorted(r[key] for r in rows if r[key] is not None) + [None] * sum(r[key] is None for r in rows)
        return values[len(values) // 2], values[-1]

    (serves_p50, serves_max), (first_p50, first_max) = spread("replica_serves_s"), spread("replica_first_token_s")
    return {
        "promotions": rows,
        "replica_serves_p50_s": serves_p50,
        "replica_serves_max_s": serves_max,
        "replica_first_token_p50_s": first_p50,
        "replica_first_token_max_s": first_max,
        "chat_requests": len(log),
        "chat_failed": sum(not e["ok"] for e in log),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--promotions", type=int, default=10)
    parser.add_argument("--gap", type=float, default=3.0, help="seconds between promotions")
    parser.add_argument("--sessions", type=int, default=2, help="customers chatting on each server")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="supportloop-replicas-"))
    url = live.postgres_database()
    envs = [
        {
            "SUPPORTLOOP_DATA_DIR": str(folder / f"server{i}"),
            "SUPPORTLOOP_DATABASE_URL": url,
            "SUPPORTLOOP_RATE_LIMIT": "100000/minute",
            "SUPPORTLOOP_MAX_NEW_TOKENS": "32",
            "SUPPORTLOOP_ADAPTER_POLL_SECONDS": "60",
        }
        for i in range(2)
    ]  # only NOTIFY makes them follow quickly
    base = resolve_base_model(Settings().base_model, Settings().model_cache)
    versions = make_adapters(folder, base, args.promotions)
    token = live.staff_token(envs[0])
    servers = []
    try:
        servers = [live.start_server(env) for env in envs]
        result = asyncio.run(
            run([u for _, u in servers], token, versions, args, lambda v: register(url, folder, v, base_model_id(base)))
        )
    finally:
        for proc, _ in servers:
            proc.terminate()
            proc.wait(timeout=30)
        live.drop_database(url)
    print(json.dumps(result, indent=2))
    print(
        f"replicas: {args.promotions} promotions on server 1 of 2 (PostgreSQL): server 2 serves the new version "
        f"p50 {result['replica_serves_p50_s']} s, max {result['replica_serves_max_s']} s after the promote request; "
        f"first token there p50 {result['replica_first_token_p50_s']} s, max {result['replica_first_token_max_s']} s; "
        f"{result['chat_failed']} of {result['chat_requests']} chat requests failed"
    )


if __name__ == "__main__":
    main()
