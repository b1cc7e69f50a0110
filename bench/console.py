"""The staff console under a realistic store: is correcting an answer a matter of seconds?

Seeds a store with ANSWERS answered conversations (DSTC9 questions and answers; a third of them voted,
a third of those down with a reason, 2 % with a handoff request), starts the real server on it, then
measures, on SQLite and PostgreSQL:

- the review API (`GET /api/review`): the first page, a page deep in the queue, a reason filter, a
  text search; a conversation (`GET /api/conversations/{id}`);
- in real Chromium (Debian's package): log in → first queue item on screen; per correction, the
  keystroke that approves an edited answer → the console showing it saved; the next page.

Prints JSON and one summary line per database. Targets: queue on screen < 1 s, a save < 0.3 s (p95).

    .venv/bin/python bench/console.py [--answers 20000] [--corrections 30] [--db sqlite postgresql]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import live
from sqlalchemy import insert

from feedback import repo
from feedback.db import open_store
from feedback.models import Conversation, Feedback, Handoff, Message, Reason, Role, StaffRole

REASONS = [reason.value for reason in Reason]


def seed(url: str, answers: int) -> str:
    """The store's rows, inserted in bulk; returns an agent's token."""
    pairs = [json.loads(line) for line in live.FAQ.read_text().splitlines()]
    rng = random.Random(0)
    conversations, messages, votes, handoffs = [], [], [], []
    for i in range(answers):
        pair, cid, mid = rng.choice(pairs), uuid.uuid4().hex, uuid.uuid4().hex
        conversations.append({"id": cid, "system_prompt": "Be brief."})
        messages += [
            {"id": uuid.uuid4().hex, "conversation_id": cid, "seq": 0, "role": Role.user, "text": pair["question"]},
            {
                "id": mid,
                "conversation_id": cid,
                "seq": 1,
                "role": Role.assistant,
                "text": pair["answer"],
                "adapter_version": rng.choice(["base", "v1-a", "v2-b"]),
            },
        ]
        if i % 3 == 0:
            down = i % 9 == 0
            votes.append(
                {"message_id": mid, "thumb": "down" if down else "up", "reason": REASONS[i % 5] if down else None}
            )
        if i % 50 == 0:
            handoffs.append({"conversation_id": cid, "message_id": mid, "status": "open"})
    store = open_store(url)
    with store.engine.begin() as conn:
        conn.execute(insert(Conversation), conversations)
        conn.execute(insert(Message), messages)
        conn.execute(insert(Feedback), votes)
        conn.execute(insert(Handoff), handoffs)
    with store.session() as s:
        token = repo.create_staff(s, name="agent", role=StaffRole.agent)[1]
    store.dispose()
    return token


def timed(call, times: int) -> list[float]:
    seconds = []
    for _ in range(times):
        start = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - start)
    return seconds


def api_timings(url: str, token: str, answers: int) -> dict:
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as client:

        def get(path: str, **params) -> dict:
            response = client.get(path, params=params)
            response.raise_for_status()
            return response.json()

        first = get("/api/review", limit=10)
        session = first["items"][0]["session_id"]
        cases = {
            "first_page": lambda: get("/api/review", limit=10),
            "deep_page": lambda: get("/api/review", limit=10, offset=answers // 2),
            "reason_filter": lambda: get("/api/review", limit=10, reason="wrong"),
            "search": lambda: get("/api/review", limit=10, q="parking"),
            "conversation": lambda: get(f"/api/conversations/{session}"),
        }
        return {"queue_total": first["total"], **{name: summary(timed(call, 15)) for name, call in cases.items()}}


def summary(seconds: list[float]) -> dict:
    ordered = sorted(seconds)
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 1),
        "p95_ms": round(ordered[max(0, round(0.95 * len(ordered)) - 1)] * 1000, 1),
        "n": len(ordered),
    }


def browser_timings(url: str, token: str, corrections: int) -> dict:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = live.launch_chromium(p)
        page = browser.new_context(viewport={"width": 1366, "height": 768}).new_page()
        page.goto(f"{url}/staff")
        page.fill("#token", token)
        start = time.perf_counter()
        page.keyboard.press("Enter")
        page.locator("#queue .item").first.wait_for()
        login = time.perf_counter() - start
        saves, pages = [], []
        while len(saves) < corrections:
            saves += correct_page(page, corrections - len(saves))
            start = time.perf_counter()
            page.get_by_role("button", name="Older page →").first.click()
            page.locator("#queue .item.current[data-index='0']").wait_for()
            pages.append(time.perf_counter() - start)
        browser.close()
    return {"login_to_queue_ms": round(login * 1000, 1), "save": summary(saves), "next_page": summary(pages)}


def correct_page(page, limit: int) -> list[float]:
    """Edit and approve the page's items from the keyboard; each save's keystroke → 'Approved' time."""
    seconds = []
    for index in range(min(limit, page.locator("#queue .item").count())):
        item = page.locator(f"#queue .item[data-index='{index}']")
        page.keyboard.press("e")
        item.locator("textarea").fill(f"A corrected answer, number {index}.")
        start = time.perf_counter()
        page.keyboard.press("Control+Enter")
        item.locator(".notice.ok").wait_for()
        seconds.append(time.perf_counter() - start)
    return seconds


def run(kind: str, answers: int, corrections: int) -> dict:
    folder = Path(tempfile.mkdtemp(prefix="console-bench-"))
    url = f"sqlite:///{folder / 'bench.db'}" if kind == "sqlite" else live.postgres_database()
    try:
        start = time.perf_counter()
        token = seed(url, answers)
        seeded = time.perf_counter() - start
        proc, base = live.start_server(
            {"SUPPORTLOOP_DATA_DIR": str(folder), "SUPPORTLOOP_DATABASE_URL": url}, "--no-access-log"
        )
        try:
            result = {
                "db": kind,
                "answers": answers,
                "seed_s": round(seeded, 1),
                "api": api_timings(base, token, answers),
                "browser": browser_timings(base, token, corrections),
            }
        finally:
            proc.terminate()
            proc.wait(timeout=60)
        return result
    finally:
        live.drop_database(url)
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--answers", type=int, default=20_000)
    parser.add_argument("--corrections", type=int, default=30)
    parser.add_argument("--db", nargs="+", default=["sqlite", "postgresql"], choices=["sqlite", "postgresql"])
    args = parser.parse_args()
    for kind in args.db:
        result = run(kind, args.answers, args.corrections)
        print(json.dumps(result))
        api, ui = result["api"], result["browser"]
        print(
            f"console on {kind} ({answers_text(result)}): queue API p95 {api['first_page']['p95_ms']} ms (deep page "
            f"{api['deep_page']['p95_ms']} ms, search {api['search']['p95_ms']} ms); login → queue on screen "
            f"{ui['login_to_queue_ms']} ms; approve an edit p50 {ui['save']['p50_ms']} ms, p95 {ui['save']['p95_ms']} ms; "
            f"next page p95 {ui['next_page']['p95_ms']} ms",
            flush=True,
        )


def answers_text(result: dict) -> str:
    return f"{result['answers']:,} answers, {result['api']['queue_total']:,} to review"


if __name__ == "__main__":
    main()
