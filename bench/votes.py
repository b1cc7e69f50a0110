"""Feedback ingestion: thumbs over HTTP from 32 concurrent clients for 20 s, on SQLite and PostgreSQL.

Seeds a store with answered conversations, starts the real server (`supportloop serve`) on it, and
has every client vote on its own answers (one fresh answer per vote, keep-alive HTTP/1.1 connections,
a minimal client so that the load generator is not the bottleneck on a 2-core machine). Afterwards it
reads the store back: every accepted vote must be there with the thumb and reason that were sent.
Prints JSON and one summary line per database. Target: >= 1,000 events/s with 0 lost.

    .venv/bin/python bench/votes.py [--clients 32] [--seconds 20] [--db sqlite postgresql]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import live
from sqlalchemy import create_engine, insert, select

from feedback.db import open_store
from feedback.models import Conversation, Feedback, Message, Reason, Role
from feedback.tokens import hash_token

REASONS = [reason.value for reason in Reason]


def database(kind: str, folder: Path) -> str:
    return f"sqlite:///{folder / 'bench.db'}" if kind == "sqlite" else live.postgres_database()


def seed(url: str, answers: int) -> list[str]:
    """`answers` conversations of one question and one answer; returns the answers' ids. Each session's
    secret is `secret(answer id)`, as a customer's widget would hold it."""
    store = open_store(url)
    ids = [uuid.uuid4().hex for _ in range(answers)]
    conversations = [
        {"id": uuid.uuid4().hex, "system_prompt": "Be brief.", "token_hash": hash_token(secret(i))} for i in ids
    ]
    messages = []
    for conversation, answer in zip(conversations, ids, strict=True):
        messages += [
            {
                "id": uuid.uuid4().hex,
                "conversation_id": conversation["id"],
                "seq": 0,
                "role": Role.user,
                "text": "When is check-in?",
                "adapter_version": None,  # every row names the same columns (an executemany takes the first's)
            },
            {
                "id": answer,
                "conversation_id": conversation["id"],
                "seq": 1,
                "role": Role.assistant,
                "text": "From 3pm.",
                "adapter_version": "base",
            },
        ]
    with store.engine.begin() as conn:
        conn.execute(insert(Conversation), conversations)
        conn.execute(insert(Message), messages)
    store.dispose()
    return ids


def start_server(url: str, data_dir: str) -> tuple[subprocess.Popen, int]:
    proc, base = live.start_server(
        {"SUPPORTLOOP_DATA_DIR": data_dir, "SUPPORTLOOP_DATABASE_URL": url}, "--no-access-log"
    )
    return proc, int(base.rsplit(":", 1)[1])


def secret(message_id: str) -> str:
    return f"bench-secret-{message_id}"


def vote_body(i: int) -> dict:
    return {"thumb": "down", "reason": REASONS[i % 5]} if i % 3 == 0 else {"thumb": "up"}


async def client(port: int, message_ids: list[str], deadline: float, sent: dict, errors: list) -> None:
    """Votes on its own answers, one per request, over one keep-alive connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for i, message_id in enumerate(message_ids):
            if time.monotonic() >= deadline:
                return
            body = json.dumps(vote_body(i)).encode()
            writer.write(
                f"POST /api/messages/{message_id}/feedback HTTP/1.1\r\nHost: bench\r\n"
                f"X-Session-Token: {secret(message_id)}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            status = int((await reader.readline()).split()[1])
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            if status == 200:
                sent[message_id] = vote_body(i)
            else:
                errors.append(status)
    finally:
        writer.close()


async def load(port: int, ids: list[str], clients: int, seconds: float) -> tuple[dict, list, float]:
    sent: dict[str, dict] = {}
    errors: list[int] = []
    share = len(ids) // clients
    started = time.monotonic()
    await asyncio.gather(
        *(client(port, ids[k * share : (k + 1) * share], started + seconds, sent, errors) for k in range(clients))
    )
    return sent, errors, time.monotonic() - started


def verify(url: str, sent: dict) -> tuple[int, int]:
    """Rows found, and accepted votes missing or different in the store."""
    engine = create_engine(url)
    with engine.connect() as conn:
        rows = {r.message_id: r for r in conn.execute(select(Feedback.message_id, Feedback.thumb, Feedback.reason))}
    engine.dispose()
    lost = sum(
        1
        for mid, vote in sent.items()
        if mid not in rows
        or rows[mid].thumb.value != vote["thumb"]
        or (rows[mid].reason.value if rows[mid].reason else None) != vote.get("reason")
    )
    return len(rows), lost


def run(kind: str, clients: int, seconds: float, answers: int) -> dict:
    folder = Path(tempfile.mkdtemp(prefix=f"supportloop-bench-feedback-{kind}-"))
    url = database(kind, folder)
    try:
        ids = seed(url, answers)
        proc, port = start_server(url, str(folder))
        try:
            sent, errors, wall = asyncio.run(load(port, ids, clients, seconds))
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        rows, lost = verify(url, sent)
    finally:
        live.drop_database(url)
    return {
        "database": kind,
        "clients": clients,
        "seconds": round(wall, 2),
        "accepted": len(sent),
        "errors": len(errors),
        "events_per_s": round(len(sent) / wall, 1),
        "rows_found": rows,
        "lost": lost,
        "ran_out_of_answers": len(sent) >= (len(ids) // clients) * clients,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--answers", type=int, default=80_000, help="answers seeded (one vote each at most)")
    parser.add_argument("--db", nargs="+", default=["sqlite", "postgresql"], choices=["sqlite", "postgresql"])
    args = parser.parse_args()
    results = [run(kind, args.clients, args.seconds, args.answers) for kind in args.db]
    print(json.dumps({"results": results}, indent=2))
    print(
        "feedback: "
        + "; ".join(
            f"{r['database']} {r['events_per_s']} events/s, {r['accepted']} accepted, "
            f"{r['rows_found']} rows found, {r['lost']} lost, {r['errors']} errors"
            for r in results
        )
    )


if __name__ == "__main__":
    main()
