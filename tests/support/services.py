"""Real services for the tests (and the benchmarks, through `bench/live.py`): a fresh PostgreSQL
database, Debian's Chromium, a free local port, uvicorn on a real port in a thread. No pytest here."""

from __future__ import annotations

import shutil
import socket
import threading
import time
import uuid


def postgres_database(admin_url: str, prefix: str) -> str:
    """A new, empty database on the PostgreSQL server of `admin_url`; its URL."""
    from sqlalchemy import create_engine, make_url, text

    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    admin.dispose()
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def drop_database(url: str, admin_url: str) -> None:
    """Drop a database made by `postgres_database` (nothing for other URLs)."""
    from sqlalchemy import create_engine, make_url, text

    if url.startswith("postgresql"):
        admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {make_url(url).database} WITH (FORCE)"))
        admin.dispose()


def pgvector_database(admin_url: str, folder) -> tuple[str | None, str]:
    """An admin URL of a PostgreSQL where pgvector can be created (for `postgres_database`), and what it
    runs on; (None, why not) when there is none. First the local PostgreSQL of `admin_url` if it has the extension, else a private
    PostgreSQL 16 with pgvector from the `pgserver` wheel, started in `folder` (stopped at exit)."""
    from sqlalchemy import create_engine, text

    admin = create_engine(admin_url)
    with admin.connect() as conn:
        local = conn.execute(text("SELECT default_version FROM pg_available_extensions WHERE name = 'vector'")).first()
    admin.dispose()
    if local is not None:
        return admin_url, f"the local PostgreSQL, pgvector {local[0]}"
    try:
        import pgserver
    except ImportError:
        return None, "the local PostgreSQL has no pgvector and the pgserver wheel is not installed"
    server = pgserver.get_server(folder, cleanup_mode="delete")
    socket_dir = server.get_uri().split("host=", 1)[1]
    return f"postgresql+psycopg://postgres@/postgres?host={socket_dir}", "PostgreSQL 16 from the pgserver wheel"


def launch_chromium(playwright):
    """Debian's chromium driven by Python playwright through `executable_path` (never a browser download)."""
    return playwright.chromium.launch(
        executable_path=shutil.which("chromium"),
        args=["--no-sandbox", "--disable-background-networking", "--disable-component-update"],
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LiveServer:
    """uvicorn on a real port in a thread (`port`: a given one, e.g. to restart a server where it was)."""

    def __init__(self, app, port: int | None = None) -> None:
        import uvicorn

        self.port = port or free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", ws="websockets-sansio")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("server did not start")
            time.sleep(0.05)
        self._wait_ready()
        return self

    def _wait_ready(self, timeout: float = 300) -> None:
        """Until the app says it is ready (`/readyz`: the model and the embedder loaded), as a load balancer
        waits; before that a chat message is refused. Apps without `/readyz` (test doubles) are ready now.
        300 s: the real model's start on a slow 2-core machine."""
        import httpx

        deadline = time.monotonic() + timeout
        while httpx.get(self.url + "/readyz", timeout=5).status_code == 503:
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready within {timeout} s")
            time.sleep(0.1)

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
