"""A real server process with the fake generator, for tests that must kill it (`kill -9`) or freeze it
(`SIGSTOP`): `python -m tests.support.fakeserver DATA_DIR DATABASE_URL PORT`. Everything but the model
is the product's own: the app factory, uvicorn, the store."""

from __future__ import annotations

import subprocess
import sys
import time

import httpx

from tests.support.common import ROOT

ANSWER = "Check-in is from three in the afternoon until nine in the evening."


def start(data_dir, database_url: str, port: int) -> subprocess.Popen:
    """The server, once it answers `/readyz`."""
    server = subprocess.Popen(
        [sys.executable, "-m", "tests.support.fakeserver", str(data_dir), database_url, str(port)], cwd=ROOT
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        assert server.poll() is None, f"the server exited: {server.returncode}"
        time.sleep(0.1)
    server.kill()
    raise AssertionError("the server did not get ready")


def main() -> None:
    import uvicorn

    from bot.server.app import create_app
    from bot.server.settings import Settings
    from tests.support.fakes import FakeGenerator

    data_dir, database_url, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    settings = Settings(data_dir=data_dir, database_url=database_url, rate_limit="100000/minute",
                        max_sessions_per_client=1000)  # fmt: skip
    app = create_app(settings, generator=FakeGenerator(ANSWER, delay=0.005, max_pending=1000))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", ws="websockets-sansio")


if __name__ == "__main__":
    main()
