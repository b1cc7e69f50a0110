"""Shared by the benchmarks (and the tests): a free local port, the real server started as its own
process, a fresh PostgreSQL database, Debian's chromium.

The PostgreSQL, Chromium and port helpers are the tests' own (`tests/support/services.py`): importing
this module puts the repository root on the path so that a benchmark run as a script finds them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

CLI = str(Path(sys.executable).parent / "supportloop")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PG_ADMIN = os.environ.get("SUPPORTLOOP_BENCH_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")

from tests.support import services  # noqa: E402 (after the path change above)
from tests.support.services import free_port, launch_chromium  # noqa: E402, F401 (the benches use them)


def postgres_database(admin_url: str = PG_ADMIN, prefix: str = "supportloop_bench") -> str:
    """A new, empty database on the PostgreSQL server of SUPPORTLOOP_BENCH_PG; its URL."""
    return services.postgres_database(admin_url, prefix)


def drop_database(url: str, admin_url: str = PG_ADMIN) -> None:
    services.drop_database(url, admin_url)


def start_server(env: dict[str, str], *args: str, timeout: float = 600) -> tuple[subprocess.Popen, str]:
    """`supportloop serve [args]` on a free port, with `env` added to this process's environment;
    returns once `/readyz` says the model is loaded (steady state), with the server's base URL."""
    port = free_port()
    path = os.environ.get("SUPPORTLOOP_BENCH_SERVER_LOG")
    log = open(path, "ab") if path else None  # noqa: SIM115 (closed below, once the server has its copy)
    proc = subprocess.Popen(
        [CLI, "serve", "--port", str(port), *args],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=log or subprocess.DEVNULL,
    )
    if log is not None:
        log.close()  # the server has its own copy
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with status {proc.returncode} before it was ready")
        try:
            if httpx.get(url + "/readyz").status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise TimeoutError("server did not become ready")


# DSTC9 questions, asked and corrected over the real API ---------------------------------------------

FAQ = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dstc9-faq" / "faq_qa.jsonl"


def pick_pairs(corrected: int, held_out: int, seed: int = 0, per_entity: int = 1) -> tuple[list[dict], list[dict]]:
    """DSTC9 hotel/restaurant Q/A pairs with the entity named in the question: `corrected` pairs (up to
    `per_entity` questions of each entity) and `held_out` pairs about other entities."""
    import json
    import random

    by_entity: dict[str, list[dict]] = {}
    for row in map(json.loads, FAQ.open()):
        if row["domain"] in ("hotel", "restaurant"):
            by_entity.setdefault(row["entity_name"], []).append(row)
    rng = random.Random(seed)
    entities = rng.sample(sorted(by_entity), len(by_entity))
    need = -(-corrected // per_entity)
    chosen = [r for e in entities[:need] for r in rng.sample(by_entity[e], min(per_entity, len(by_entity[e])))]
    others = [rng.choice(by_entity[e]) for e in entities[need : need + held_out]]
    if len(chosen) < corrected or len(others) < held_out:
        raise ValueError(f"not enough DSTC9 entities for {corrected} + {held_out} questions")
    pair = lambda r: {"question": f"{r['entity_name'].title()}: {r['question']}", "reference": r["answer"]}  # noqa: E731
    return [pair(r) for r in chosen[:corrected]], [pair(r) for r in others]


def ask(ws_url: str, text: str) -> dict:
    """One question over the chat WebSocket: the answer text, its message id, version and timings."""
    import json

    from websockets.sync.client import connect

    started, first, parts = time.perf_counter(), None, []
    with connect(ws_url, open_timeout=60) as ws:
        ws.send(json.dumps({"type": "user_message", "text": text}))
        while True:
            frame = json.loads(ws.recv(timeout=900))
            if frame["type"] == "token":
                first = first or time.perf_counter()
                parts.append(frame["text"])
            elif frame["type"] in ("done", "error"):
                break
    return {
        "text": "".join(parts).strip(),
        "ttft_s": (first or time.perf_counter()) - started,
        "total_s": time.perf_counter() - started,
        **{k: frame.get(k) for k in ("message_id", "adapter_version", "code", "sources", "prompt_tokens")},
    }


def ask_all(ws_url: str, questions: list[str], concurrency: int = 16) -> list[dict]:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(lambda q: ask(ws_url, q), questions))


def staff_token(env: dict[str, str], name: str = "bench", role: str = "admin") -> str:
    out = subprocess.run(
        [CLI, "staff", "add", name, "--role", role],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.split()[-1]


def approve(url: str, token: str, message_id: str, text: str) -> None:
    httpx.post(
        f"{url}/api/messages/{message_id}/corrections",
        headers={"Authorization": f"Bearer {token}"},
        json={"text": text, "approve": True},
        timeout=60,
    ).raise_for_status()


def wait_for_version(url: str, version: str, timeout: float = 300) -> float:
    """Seconds until the server at `url` serves `version`."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            if httpx.get(url + "/readyz").json().get("adapter_version") == version:
                return time.monotonic() - started
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.05)
    raise TimeoutError(f"the server did not switch to {version} within {timeout} s")


def train_round(env: dict[str, str], *args: str) -> tuple[str, dict, bool, float]:
    """`supportloop train --quiet [args]` with `env` added: the new version, its manifest, whether the gate
    passed (exit 0; 4 = rejected) and the wall time. Raises on any other exit."""
    import json

    env = {**os.environ, **env}
    started = time.perf_counter()
    result = subprocess.run([CLI, "train", "--quiet", *args], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode not in (0, 4):
        raise RuntimeError(f"train failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    version = result.stdout.split("new adapter ")[1].split()[0]
    data_dir = Path(env["SUPPORTLOOP_DATA_DIR"])
    manifest = json.loads((data_dir / "adapters" / version / "manifest.json").read_text())
    return version, manifest, result.returncode == 0, seconds
