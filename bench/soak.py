"""Soak: 50 WebSocket sessions for 5 minutes on the real server (SmolLM2, loopback), with votes,
corrections and 3 promotions; no error, nothing lost, memory and file descriptors flat.

Each of the 50 is a customer from its own address (`X-Forwarded-For`, trusted from loopback as behind a
proxy) holding conversations of 5 DSTC9 questions (a new socket and session each, so connections come
and go all along), voting on every answer (with the session's secret) and reading for 2 s; an agent corrects one answer in ten (half approved); three adapters (random LoRA
weights, made on the spot as `bench/swap.py` does) are promoted at a quarter, half and three quarters of
the run. Every 5 s the server's resident memory (its whole process tree: the server and its model
workers) and open file descriptors are sampled. Afterwards every answer a customer saw `done` for and
every acknowledged vote and correction is looked up in the store.

Targets: 0 errors, 0 lost; RSS at the end within 5% of RSS after the warm-up (the first minute); open
file descriptors flat: once the customers have gone, the server holds no more sockets than before they
came and no other files (the store's pooled connections may hold the database file more times). Prints JSON and one summary line.

    .venv/bin/python bench/soak.py [--sessions 50] [--seconds 300] [--warmup 60]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
import time
from pathlib import Path

import httpx
import live
import psutil
import websockets
from swap import make_adapters, register

from bot.runtime.base_model import base_model_id, resolve_base_model
from bot.server.settings import Settings

TURNS, THINK_S = 5, 2.0  # questions a conversation, seconds reading each answer


class Soak:
    def __init__(self, url: str, token: str, questions: list[str], until: float) -> None:
        self.url, self.ws_url, self.until = url, url.replace("http", "ws") + "/ws/chat", until
        self.staff = {"Authorization": f"Bearer {token}"}
        self.questions = questions
        self.answers: list[dict] = []  # done frames + the session's id and the streamed text
        self.votes: dict[str, str] = {}  # message id → thumb, acknowledged
        self.corrections: dict[int, str] = {}  # id → text, acknowledged
        self.errors: list[str] = []
        self.differing: list[dict] = []  # answers stored other than streamed (the first few)

    async def customer(self, number: int) -> None:
        """Conversations of `TURNS` questions (a new socket and session each) until the end."""
        address, turn = f"10.{number // 250}.{number % 250}.7", 0
        try:
            while time.monotonic() < self.until:
                turn = await self._conversation(number, address, turn)
        except Exception as exc:  # a broken connection is an error of the run
            self.errors.append(f"customer {number}: {type(exc).__name__}: {exc}")

    async def _conversation(self, number: int, address: str, turn: int) -> int:
        async with websockets.connect(self.ws_url, additional_headers={"X-Forwarded-For": address}) as ws:
            await ws.send(json.dumps({"type": "hello", "protocol": 2}))
            session = json.loads(await ws.recv())
            headers = {"X-Session-Token": session["session_token"], "X-Forwarded-For": address}
            async with httpx.AsyncClient(base_url=self.url, headers=headers, timeout=120) as http:
                for _ in range(TURNS):
                    question = self.questions[(number * 13 + turn) % len(self.questions)]
                    await self._turn(ws, http, session["session_id"], question, turn)
                    turn += 1
                    await asyncio.sleep(THINK_S)
                    if time.monotonic() >= self.until:
                        break
        return turn

    async def _turn(self, ws, http: httpx.AsyncClient, session_id: str, question: str, turn: int) -> None:
        await ws.send(json.dumps({"type": "user_message", "text": question}))
        text = ""
        while (frame := json.loads(await ws.recv()))["type"] == "token":
            text += frame["text"]
        if frame["type"] != "done":
            self.errors.append(f"{frame['type']}: {frame.get('code')} {frame.get('message')}")
            return
        self.answers.append({**frame, "text": text, "session_id": session_id})
        thumb = "up" if turn % 2 else "down"
        vote = await http.post(f"/api/messages/{frame['message_id']}/feedback", json={"thumb": thumb})
        if vote.status_code != 200:
            self.errors.append(f"vote {vote.status_code}: {vote.text[:200]}")
            return
        self.votes[frame["message_id"]] = thumb
        if random.random() < 0.1:
            await self._correct(http, frame["message_id"], turn)

    async def _correct(self, http: httpx.AsyncClient, message_id: str, turn: int) -> None:
        text = f"A staff answer, turn {turn}."
        body = {"text": text, "approve": turn % 2 == 0}
        saved = await http.post(f"/api/messages/{message_id}/corrections", json=body, headers=self.staff)
        if saved.status_code != 201:
            self.errors.append(f"correction {saved.status_code}: {saved.text[:200]}")
            return
        self.corrections[saved.json()["id"]] = text


async def _promote(soak: Soak, versions: list[str], started: float, seconds: float, log: list[dict]) -> None:
    async with httpx.AsyncClient(base_url=soak.url, headers=soak.staff, timeout=300) as http:
        for i, version in enumerate(versions, start=1):
            await asyncio.sleep(max(0.0, started + seconds * i / (len(versions) + 1) - time.monotonic()))
            reply = await http.post(f"/api/admin/adapters/{version}/promote")
            log.append({"version": version, "status": reply.status_code, "at_s": round(time.monotonic() - started, 1)})
            if reply.status_code != 200:
                soak.errors.append(f"promotion of {version}: {reply.status_code} {reply.text[:200]}")


def _footprint(pid: int, started: float) -> dict:
    """Resident MiB of the server and its descendants (the model workers), each and together, and the
    server's open file descriptors."""
    server = psutil.Process(pid)
    each = [round(p.memory_info().rss / 2**20, 1) for p in (server, *server.children(recursive=True))]
    return {"t_s": round(time.monotonic() - started, 1), "rss_mib": round(sum(each), 1), "rss_each_mib": each,
            "fds": server.num_fds(), "sockets": len(server.net_connections()),
            "files": [f.path.rsplit("/", 1)[-1] for f in server.open_files()]}  # fmt: skip


async def _sample(pid: int, until: float, samples: list[dict], started: float) -> None:
    while time.monotonic() < until:
        samples.append(_footprint(pid, started))
        await asyncio.sleep(5.0)


async def run(url: str, pid: int, token: str, versions: list[str], args) -> dict:
    chosen, others = live.pick_pairs(60, 60)
    started = time.monotonic()
    soak = Soak(url, token, [p["question"] for p in chosen + others], started + args.seconds)
    samples: list[dict] = []
    promotions: list[dict] = []
    before = _footprint(pid, started)  # no customer connected yet
    await asyncio.gather(
        *(soak.customer(i) for i in range(args.sessions)),
        _promote(soak, versions, started, args.seconds, promotions),
        _sample(pid, started + args.seconds, samples, started),
    )
    samples.append(_footprint(pid, started))
    await asyncio.sleep(3.0)  # every customer has hung up
    after = _footprint(pid, started)
    return {"soak": soak, "samples": samples, "promotions": promotions, "before": before, "after": after}


def _lost(store_url: str, soak: Soak) -> dict:
    from sqlmodel import select

    from feedback.db import open_store
    from feedback.models import Correction, Feedback, Message

    store = open_store(store_url)
    with store.session() as s:
        texts = {m.id: m.text for m in s.exec(select(Message).where(Message.role == "assistant"))}
        votes = {v.message_id: v.thumb.value for v in s.exec(select(Feedback))}
        corrections = {c.id: c.text for c in s.exec(select(Correction))}
    store.dispose()
    differ = [a for a in soak.answers if texts.get(a["message_id"]) != a["text"].strip()]  # stored stripped
    soak.differing = [{"streamed": a["text"], "stored": texts.get(a["message_id"])} for a in differ[:5]]
    return {
        "answers": len(differ),
        "votes": sum(votes.get(m) != thumb for m, thumb in soak.votes.items()),
        "corrections": sum(corrections.get(i) != text for i, text in soak.corrections.items()),
    }


def summarize(result: dict, lost: dict, warmup: float) -> dict:
    samples, soak = result["samples"], result["soak"]
    warm = next(s for s in samples if s["t_s"] >= warmup)
    end = samples[-1]
    growth = (end["rss_mib"] - warm["rss_mib"]) / warm["rss_mib"]
    before, after = result["before"], result["after"]
    return {
        "answers": len(soak.answers),
        "votes": len(soak.votes),
        "corrections": len(soak.corrections),
        "promotions": result["promotions"],
        "errors": len(soak.errors),
        "first_errors": soak.errors[:10],
        "lost": lost,
        "answers_differing": soak.differing,
        "rss_mib_after_warmup": warm["rss_mib"],
        "rss_mib_end": end["rss_mib"],
        "rss_growth_pct": round(growth * 100, 2),
        "rss_each_mib_after_warmup": warm["rss_each_mib"],
        "rss_each_mib_end": end["rss_each_mib"],
        "fds_before_load": before["fds"],
        "fds_peak": max(s["fds"] for s in samples),
        "fds_after_load": after["fds"],
        "sockets_before_load": before["sockets"],
        "sockets_after_load": after["sockets"],
        "files_before_load": before["files"],
        "files_after_load": after["files"],
        "samples": samples,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--warmup", type=float, default=60.0, help="seconds before memory is the reference")
    parser.add_argument("--promotions", type=int, default=3)
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for the server's environment")
    args = parser.parse_args()
    data_dir = Path(tempfile.mkdtemp(prefix="supportloop-soak-"))
    env = {"SUPPORTLOOP_DATA_DIR": str(data_dir), "SUPPORTLOOP_MAX_NEW_TOKENS": "48"}
    env |= dict(item.split("=", 1) for item in args.env)
    token = live.staff_token(env)
    base = resolve_base_model(Settings().base_model, Settings().model_cache)
    versions = make_adapters(data_dir, base, args.promotions)
    store_url = f"sqlite:///{data_dir / 'supportloop.db'}"
    for version in versions:  # candidates awaiting promotion, as training rounds leave them
        register(store_url, data_dir, version, base_model_id(base))
    proc, url = live.start_server(env, "--no-access-log")
    try:
        result = asyncio.run(run(url, proc.pid, token, versions, args))
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    report = summarize(result, _lost(store_url, result["soak"]), args.warmup)
    lost = sum(report["lost"].values())
    met = (
        report["errors"] == 0
        and lost == 0
        and report["rss_growth_pct"] <= 5
        and report["sockets_after_load"] <= report["sockets_before_load"]
        and set(report["files_after_load"]) <= set(report["files_before_load"])
    )
    print(json.dumps({**report, "sessions": args.sessions, "seconds": args.seconds, "target_met": met}, indent=2))
    print(
        f"soak: {args.sessions} sessions × {args.seconds:.0f} s: {report['answers']} answers, {report['votes']} votes, "
        f"{report['corrections']} corrections, {len(report['promotions'])} promotions; errors {report['errors']}, "
        f"lost {lost}; RSS {report['rss_mib_after_warmup']:.0f} → {report['rss_mib_end']:.0f} MiB "
        f"({report['rss_growth_pct']:+.1f}% after warm-up); fds {report['fds_before_load']} before the load, "
        f"{report['fds_peak']} at most, {report['fds_after_load']} after (sockets {report['sockets_before_load']} → "
        f"{report['sockets_after_load']}); "
        f"targets {'met' if met else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
