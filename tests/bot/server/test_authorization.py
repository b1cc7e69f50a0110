"""The authorization matrix (issue 21): every route of the app × every kind of caller, and the status each
must get, over a real port. The routes come from the app itself: a new route without an entry in
`ACCESS` fails `test_every_route_has_an_entry`, so none can ship without its rule being decided.

Callers: nobody; a wrong token (a staff bearer token no account has, and for customer routes a session
secret that is not the session's); a disabled staff member; an agent; an admin; the admin's console
login cookie without the CSRF header; the same cookie with the right CSRF header but from another
site's page (`Origin`)."""

from __future__ import annotations

import json

import httpx
import pytest
from starlette.routing import Mount
from websockets.sync.client import connect

from bot.server.app import create_app
from bot.server.deps import CSRF_HEADER, LOGIN_COOKIE
from feedback import repo
from feedback.logins import find_login
from feedback.models import StaffRole
from tests.support.fakes import FakeGenerator
from tests.support.services import LiveServer

PUBLIC = "public"  # anyone (health, metrics, the widget, the customer-facing chat and OpenAI-style APIs)
CUSTOMER = "customer"  # the session's own customer: X-Session-Token
STAFF = "staff"  # agents and admins: a bearer token, or the console cookie (+ CSRF for changes)
ADMIN = "admin"
PAGE = "page"  # a console page: the login cookie, else a redirect to the login form
LOGIN = "login"  # the login form's POST: a token in the form, from this server's own pages
LOGOUT = "logout"  # the logout form's POST: the cookie + the page's CSRF token, from this server's pages
DOCS = "docs"  # FastAPI's own schema and documentation pages

ACCESS: dict[tuple[str, str], str] = {
    ("GET", "/openapi.json"): DOCS,
    ("GET", "/docs"): DOCS,
    ("GET", "/docs/oauth2-redirect"): DOCS,
    ("GET", "/redoc"): DOCS,
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/readyz"): PUBLIC,
    ("GET", "/metrics"): PUBLIC,
    ("GET", "/widget.js"): PUBLIC,
    ("GET", "/"): PUBLIC,
    ("POST", "/api/chat"): PUBLIC,
    ("GET", "/api/handoff/availability"): PUBLIC,
    ("GET", "/v1/models"): PUBLIC,
    ("POST", "/v1/chat/completions"): PUBLIC,
    ("WS", "/ws/chat"): PUBLIC,
    ("GET", "/api/sessions/{session_id}"): CUSTOMER,
    ("POST", "/api/messages/{message_id}/feedback"): CUSTOMER,
    ("POST", "/api/sessions/{session_id}/handoff"): CUSTOMER,
    ("POST", "/api/sessions/{session_id}/contact"): CUSTOMER,
    ("GET", "/api/handoffs"): STAFF,
    ("POST", "/api/handoffs/{handoff_id}/take"): STAFF,
    ("POST", "/api/handoffs/{handoff_id}/hand-back"): STAFF,
    ("POST", "/api/handoffs/{handoff_id}/close"): STAFF,
    ("POST", "/api/handoffs/{handoff_id}/messages"): STAFF,
    ("WS", "/ws/staff"): STAFF,
    ("GET", "/api/review"): STAFF,
    ("GET", "/api/conversations/{conversation_id}"): STAFF,
    ("POST", "/api/messages/{message_id}/corrections"): STAFF,
    ("GET", "/api/corrections"): STAFF,
    ("PATCH", "/api/corrections/{correction_id}"): STAFF,
    ("POST", "/api/corrections/{correction_id}/approve"): STAFF,
    ("POST", "/api/corrections/{correction_id}/reject"): STAFF,
    ("GET", "/api/staff"): ADMIN,
    ("POST", "/api/staff"): ADMIN,
    ("PATCH", "/api/staff/{staff_id}"): ADMIN,
    ("GET", "/api/audit"): ADMIN,
    ("POST", "/api/admin/train"): ADMIN,
    ("GET", "/api/admin/train"): ADMIN,
    ("GET", "/api/admin/train/{run_id}"): ADMIN,
    ("GET", "/api/admin/adapters"): ADMIN,
    ("GET", "/api/admin/adapters/votes"): ADMIN,
    ("POST", "/api/admin/adapters/canary/stop"): ADMIN,
    ("POST", "/api/admin/adapters/{version}/canary"): ADMIN,
    ("POST", "/api/admin/adapters/{version}/promote"): ADMIN,
    ("POST", "/api/admin/adapters/rollback"): ADMIN,
    ("GET", "/api/admin/knowledge"): ADMIN,
    ("POST", "/api/admin/knowledge"): ADMIN,
    ("DELETE", "/api/admin/knowledge/{source}"): ADMIN,
    ("GET", "/api/admin/knowledge/search"): ADMIN,
    ("GET", "/staff/login"): PUBLIC,
    ("POST", "/staff/login"): LOGIN,
    ("POST", "/staff/logout"): LOGOUT,
    ("GET", "/staff"): PAGE,
    ("GET", "/staff/inbox"): PAGE,
    ("GET", "/staff/conversations/{conversation_id}"): PAGE,
    ("GET", "/staff/adapters"): PAGE,
    ("GET", "/staff/knowledge"): PAGE,
    ("GET", "/staff/team"): PAGE,
    ("GET", "/staff/static"): PUBLIC,  # the console's CSS and scripts (no data)
}
CALLERS = (
    "nobody",
    "wrong token",
    "disabled staff",
    "agent",
    "admin",
    "cookie without CSRF",
    "cookie from another site",
)
OPEN = "open"  # past authorization: whatever the route answers to the dummy request, but never 401/403 or 5xx
# The dummy request of a route: path parameters, and a body that cannot change anything once authorized
# (training is asked for with a malformed body: a 422, never a real round).
PARAMS = {"session_id": "s0", "message_id": "m0", "handoff_id": "1", "conversation_id": "c0", "correction_id": "1",
          "staff_id": "999", "run_id": "1", "version": "v-none", "source": "none"}  # fmt: skip
BODIES = {
    ("POST", "/api/admin/train"): {"methods": "not-a-list"},
    ("PATCH", "/api/staff/{staff_id}"): {"role": "boss"},
    ("POST", "/api/messages/{message_id}/feedback"): {"thumb": "up"},  # valid: only the secret is wrong
    ("POST", "/api/sessions/{session_id}/contact"): {"email": "jo@example.com"},
}


def routes(app) -> set[tuple[str, str]]:
    """(method, path) of every route the app serves, through included routers and mounts."""
    found: set[tuple[str, str]] = set()
    for route in app.routes:
        contexts = route.effective_route_contexts() if hasattr(route, "effective_route_contexts") else [route]
        for context in contexts:
            original = getattr(context, "original_route", context)
            if isinstance(original, Mount):
                found.add(("GET", original.path))
            elif not getattr(context, "methods", None):
                found.add(("WS", original.path))
            else:
                found |= {(method, original.path) for method in context.methods if method != "HEAD"}
    return found


def expected(kind: str, caller: str, method: str) -> int | str:
    changes = method not in ("GET", "WS")
    cookie = caller.startswith("cookie")
    if kind in (PUBLIC, DOCS):
        return OPEN
    if kind == CUSTOMER:  # staff credentials do not stand for a customer's secret
        return 404 if caller == "wrong token" else 401
    if kind == PAGE:  # the cookie only: anyone else is sent to the login form
        return 200 if cookie else 303
    if kind == LOGIN:  # the form carries the token; from another site's page it is refused
        return 403 if caller == "cookie from another site" else 401
    if kind == LOGOUT:
        return 303 if caller in ("nobody", "wrong token", "disabled staff", "agent", "admin") else 403
    if caller in ("nobody", "wrong token"):
        return 401
    if caller == "disabled staff" or (caller == "agent" and kind == ADMIN):
        return 403
    if cookie and changes:  # CSRF: the header missing, or the page is another site's
        return 403
    if method == "WS" and caller == "cookie from another site":  # a browser sends no CSRF header on a socket:
        return 403  # its Origin is what stops another site's page from opening one with the cookie
    return OPEN


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from bot.server.settings import Settings
    from feedback.db import open_store

    folder = tmp_path_factory.mktemp("authz")
    settings = Settings(data_dir=folder, rate_limit="100000/minute", max_sessions_per_client=1000)
    store = open_store(settings.db_url)
    with store.session() as s:
        tokens = {name: repo.create_staff(s, name=name, role=role)[1]
                  for name, role in (("ada", StaffRole.admin), ("bob", StaffRole.agent), ("cy", StaffRole.agent))}  # fmt: skip
        repo.update_staff(s, actor=repo.staff_by_token(s, token=tokens["ada"]), staff_id=3, disabled=True)
    app = create_app(settings, generator=FakeGenerator("An answer."), store=store)
    with LiveServer(app) as server:
        login = httpx.post(server.url + "/staff/login", data={"token": tokens["ada"]})
        cookie = login.cookies[LOGIN_COOKIE]
        with store.session() as s:
            csrf = find_login(s, token=cookie)[1].csrf_token
        yield server, app, _callers(tokens, cookie, csrf, server.url)
    store.dispose()


def _callers(tokens: dict, cookie: str, csrf: str, url: str) -> dict[str, dict[str, str]]:
    bearer = {name: {"Authorization": f"Bearer {token}"} for name, token in tokens.items()}
    jar = {"Cookie": f"{LOGIN_COOKIE}={cookie}"}
    return {
        "nobody": {},
        "wrong token": {"Authorization": "Bearer slt_nobody-has-this", "X-Session-Token": "not-the-secret"},
        "disabled staff": bearer["cy"],
        "agent": bearer["bob"],
        "admin": bearer["ada"],
        "cookie without CSRF": jar,
        "cookie from another site": jar | {CSRF_HEADER: csrf, "Origin": "https://evil.example"},
    }


def test_every_route_has_an_entry(served):
    _, app, _ = served
    assert routes(app) - set(ACCESS) == set(), "a route without an authorization rule: add it to ACCESS"
    assert set(ACCESS) - routes(app) == set(), "ACCESS names a route the app no longer has"


def _http(url: str, method: str, path: str, headers: dict) -> httpx.Response:
    target = path.format(**PARAMS) if path != "/staff/static" else "/staff/static/console.css"
    body = BODIES.get((method, path), {}) if method in ("POST", "PATCH") else None
    if (method, path) in (("POST", "/staff/login"), ("POST", "/staff/logout")):
        return httpx.post(url + target, data={}, headers=headers)
    return httpx.request(method, url + target, json=body, headers=headers, timeout=30)


def _socket(url: str, path: str, headers: dict) -> str:
    with connect(url.replace("http", "ws") + path, additional_headers=headers, open_timeout=10) as ws:
        if path == "/ws/chat":
            ws.send(json.dumps({"type": "hello", "protocol": 2}))
        frame = json.loads(ws.recv(timeout=10))
    return frame.get("code") or frame["type"]


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize("route", sorted(ACCESS), ids=lambda r: f"{r[0]} {r[1]}")
def test_each_caller_gets_what_the_rule_says(served, route, caller):
    server, _, callers = served
    method, path = route
    want = expected(ACCESS[route], caller, method)
    if method == "WS":
        got = _socket(server.url, path, callers[caller])
        assert got == ("unauthorized" if want in (401, 403) else ("session" if path == "/ws/chat" else "hello"))
        return
    reply = _http(server.url, method, path, callers[caller])
    if want == OPEN:
        assert reply.status_code not in (401, 403) and reply.status_code < 500, reply.text[:300]
    else:
        assert reply.status_code == want, reply.text[:300]
    if reply.status_code in (401, 403, 404) and reply.headers.get("content-type", "").startswith("application/json"):
        assert reply.json()["detail"], "a refusal says why"
