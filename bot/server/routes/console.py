"""The staff console at `/staff`: server-rendered page shells (login, review queue, a conversation,
inbox, adapters, knowledge, team) whose data `console.js` fetches from the staff and admin APIs with the login cookie and
the page's CSRF token. Pages without a live login go to the login page; admin pages answer agents 403."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, PackageLoader, select_autoescape

from bot.server.deps import DISABLED, LOGIN_COOKIE, SessionDep, console_login, csrf_passes, same_origin
from feedback import repo
from feedback.logins import close_login, open_login
from feedback.models import Staff, StaffRole

router = APIRouter(prefix="/staff", include_in_schema=False)
templates = Jinja2Templates(
    env=Environment(loader=PackageLoader("bot.server", "console/templates"), autoescape=select_autoescape(default=True))
)
HEADERS = {  # pages carry data: never cached, never framed, scripts and styles only from this server
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
}
PAGES = {
    "queue": ("Review queue", StaffRole.agent),
    "inbox": ("Inbox", StaffRole.agent),
    "conversation": ("Conversation", StaffRole.agent),
    "adapters": ("Adapters", StaffRole.admin),
    "knowledge": ("Knowledge", StaffRole.admin),
    "team": ("Team", StaffRole.admin),
}
LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")


def _render(request: Request, name: str, status: int = 200, **context) -> HTMLResponse:
    return templates.TemplateResponse(request, name, context, status_code=status, headers=HEADERS)


def _login_page(
    request: Request, error: str | None = None, status: int = 200, next_url: str = "/staff"
) -> HTMLResponse:
    return _render(request, "login.html", status, error=error, next_url=_safe_next(next_url))


def _safe_next(url: str | None) -> str:
    """Only a console path: never an open redirect to another site."""
    return url if url and url.startswith("/staff") and not url.startswith("//") and "\\" not in url else "/staff"


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, session: SessionDep, next: str = "/staff") -> Response:
    found = console_login(request, session)
    if found and not found[0].disabled:
        return RedirectResponse(_safe_next(next), status_code=303)
    return _login_page(request, next_url=next, error=DISABLED if found else None)


@router.post("/login", response_class=HTMLResponse)
def login(
    request: Request,
    session: SessionDep,
    token: Annotated[str, Form(max_length=200)] = "",
    next: Annotated[str, Form(max_length=2000)] = "/staff",
) -> Response:
    problem = _login_problem(request, session, token.strip())
    if isinstance(problem, tuple):
        return _login_page(request, problem[1], problem[0], next)
    cookie, login_row = open_login(session, staff=problem, hours=request.app.state.settings.staff_login_hours)
    response = RedirectResponse(_safe_next(next), status_code=303)
    response.set_cookie(
        LOGIN_COOKIE,
        cookie,
        expires=login_row.expires_at,
        path="/",
        httponly=True,
        secure=request.app.state.settings.cookie_secure,
        samesite="lax",
    )
    return response


def _login_problem(request: Request, session, token: str) -> Staff | tuple[int, str]:
    """The staff member the token logs in, or (status, message) saying why not."""
    if not same_origin(request):
        return 403, "This login form was sent from another site; log in from this page."
    insecure = request.url.scheme != "https" and request.url.hostname not in LOOPBACK
    if insecure and request.app.state.settings.cookie_secure:
        return 400, (
            "This console must be served over HTTPS: its login cookie is Secure, so the browser would drop "
            "it here. Serve it behind TLS (uvicorn --proxy-headers) or, on a trusted network only, set "
            "SUPPORTLOOP_COOKIE_SECURE=false."
        )
    staff = repo.staff_by_token(session, token=token) if token else None
    if staff is None:
        return 401, "That token does not belong to any staff account."
    if staff.disabled:
        return 403, DISABLED
    return staff


@router.post("/logout")
def logout(request: Request, session: SessionDep, csrf: Annotated[str, Form(max_length=200)] = "") -> Response:
    found = console_login(request, session)
    if found and not csrf_passes(request, found[1], csrf):
        return _render(
            request,
            "message.html",
            403,
            title="Not logged out",
            message="The logout form did not come from this console; you are still logged in.",
        )
    if found:
        close_login(session, staff=found[0], login=found[1])
    response = RedirectResponse("/staff/login", status_code=303)
    response.delete_cookie(
        LOGIN_COOKIE, path="/", httponly=True, secure=request.app.state.settings.cookie_secure, samesite="lax"
    )
    return response


def _page(request: Request, session, page: str, **data) -> Response:
    found = console_login(request, session)
    if found is None or found[0].disabled:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/staff/login?next={quote(target, safe='/')}", status_code=303)
    staff, login_row = found
    title, needs = PAGES[page]
    context = {"staff": staff, "login": login_row, "page": page, "title": title, "data": data}
    if needs == StaffRole.admin and staff.role != StaffRole.admin:
        return _render(
            request,
            "message.html",
            403,
            **(context | {"title": "Admins only"}),
            message="This page needs an admin account.",
        )
    return _render(request, "page.html", **context)


@router.get("", response_class=HTMLResponse)
def queue_page(request: Request, session: SessionDep) -> Response:
    return _page(request, session, "queue")


@router.get("/inbox", response_class=HTMLResponse)
def inbox_page(request: Request, session: SessionDep) -> Response:
    return _page(request, session, "inbox")


@router.get("/conversations/{conversation_id}", response_class=HTMLResponse)
def conversation_page(conversation_id: str, request: Request, session: SessionDep) -> Response:
    return _page(request, session, "conversation", conversation=conversation_id)


@router.get("/adapters", response_class=HTMLResponse)
def adapters_page(request: Request, session: SessionDep) -> Response:
    return _page(request, session, "adapters")


@router.get("/knowledge", response_class=HTMLResponse)
def knowledge_page(request: Request, session: SessionDep) -> Response:
    return _page(request, session, "knowledge")


@router.get("/team", response_class=HTMLResponse)
def team_page(request: Request, session: SessionDep) -> Response:
    return _page(request, session, "team")
