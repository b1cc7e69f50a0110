"""Shared by the benchmarks: a free local port, and the real server started as its own process.

Import it before the project's packages: `bench/feedback.py` is named like the `feedback` package, and
this folder (first on the path when a benchmark runs as a script) would shadow it, so importing this
module takes the folder off the path.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

CLI = str(Path(sys.executable).parent / "supportloop")
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(env: dict[str, str], *args: str, timeout: float = 600) -> tuple[subprocess.Popen, str]:
    """`supportloop serve [args]` on a free port, with `env` added to this process's environment;
    returns once `/readyz` says the model is loaded (steady state), with the server's base URL."""
    port = free_port()
    proc = subprocess.Popen([CLI, "serve", "--port", str(port), *args], env={**os.environ, **env},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/readyz").status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise TimeoutError("server did not become ready")
