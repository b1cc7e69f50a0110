"""A customer's web site on its own origin (another port) that embeds the widget, with CSS that tries to
restyle everything on the page."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.support.common import ROOT
from tests.support.services import free_port

HOSTILE_CSS = (
    "* { color: rgb(255, 0, 0) !important; font-family: serif !important; } button { display: none !important; }"
)


def _host_page(bot_url: str, script_url: str) -> bytes:
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Shop</title><style>{HOSTILE_CSS}</style></head>
<body><h1>A shop</h1><button id="own">the shop's own button</button>
<script src="{script_url}" data-server="{bot_url}" data-title="Shop help" async></script></body></html>""".encode()


@contextmanager
def host_site(bot_url: str, *, own_copy: bool = False):
    """A customer's site on its own origin (another port), embedding the widget served by the bot (or,
    with `own_copy`, a copy of the script the site serves itself, for a bot that cannot be reached)."""
    script = (ROOT / "widget" / "widget.js").read_bytes()
    port = free_port()
    page = _host_page(bot_url, "/widget.js" if own_copy else f"{bot_url}/widget.js")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            body, kind = (script, "text/javascript") if self.path == "/widget.js" else (page, "text/html")
            self.send_response(200)
            self.send_header("Content-Type", f"{kind}; charset=utf-8")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://localhost:{server.server_address[1]}/"
    finally:
        server.shutdown()
