"""`Annotated` dependencies: the store session, the chat service, the customer's session secret, the
authenticated staff member.

Customers show their session's secret (given once, in the `session` frame or a REST reply) in
`X-Session-Token` to read the transcript, vote, ask for a person or leave an email: session and message
ids alone open nothing, since staff pages, logs and exports show them.

Staff authenticate with `Authorization: Bearer <token>` (scripts, the CLI) or with the staff console's
login cookie; a cookie-authenticated request that changes state must also carry the login's CSRF token
in `X-CSRF-Token` and, if the browser sent an `Origin`, come from this server's own origin."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import Depends, Header, HTTPException, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import Field
from sqlmodel import Session
from starlette.requests import HTTPConnection

from bot.server.chat_service import ChatService
from bot.server.protocol import MAX_SESSION_TOKEN
from feedback import repo
from feedback.logins import find_login
from feedback.models import Staff, StaffLogin, StaffRole

LOGIN_COOKIE = "supportloop_staff"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
DISABLED = "This staff account is disabled; ask an admin."


def get_session(request: Request) -> Iterator[Session]:
    with request.app.state.store.session() as session:
        yield session


def client_address(connection: HTTPConnection) -> str:
    """The client's address (behind a proxy, uvicorn's --proxy-headers makes this the real client)."""
    return connection.client.host if connection.client else "unknown"


def get_chat(request: Request) -> ChatService:
    return request.app.state.chat


SessionDep = Annotated[Session, Depends(get_session)]
MAX_ROW_ID = 2**63 - 1  # the databases' BIGINT: a larger number in a path is a 422, not a driver error
RowId = Annotated[int, Path(ge=0, le=MAX_ROW_ID, description="a row id")]
StoredInt = Annotated[int, Field(ge=0, le=MAX_ROW_ID)]  # an id or revision in a request body
ChatDep = Annotated[ChatService, Depends(get_chat)]
SESSION_TOKEN_HEADER = "X-Session-Token"
NO_SESSION_TOKEN = (
    f"This needs the session's secret in {SESSION_TOKEN_HEADER} (given with the session id when it was started)."
)
SessionToken = Annotated[
    str | None,
    Header(alias=SESSION_TOKEN_HEADER, max_length=MAX_SESSION_TOKEN, description="the customer's session secret"),
]


def require_session_token(token: SessionToken = None) -> str:
    if not token:
        raise HTTPException(401, NO_SESSION_TOKEN)
    return token


CustomerTokenDep = Annotated[str, Depends(require_session_token)]
_bearer = HTTPBearer(auto_error=False)


def console_login(request: Request, session: Session) -> tuple[Staff, StaffLogin] | None:
    """The staff member and login of the request's console cookie, if it is a live login."""
    token = request.cookies.get(LOGIN_COOKIE)
    return find_login(session, token=token) if token else None


def same_origin(request: Request) -> bool:
    """False only when the browser says the request comes from another site's page."""
    origin = request.headers.get("origin")
    return origin is None or urlsplit(origin).netloc == request.headers.get("host")


def csrf_passes(request: Request, login: StaffLogin, sent: str) -> bool:
    """Whether a console request that changes something carries the login's CSRF token (`sent`) and
    comes from this server's own pages."""
    return same_origin(request) and secrets.compare_digest(sent.encode(), login.csrf_token.encode())


def _check_csrf(request: Request, login: StaffLogin) -> None:
    if request.method in SAFE_METHODS:
        return
    if not csrf_passes(request, login, request.headers.get(CSRF_HEADER, "")):
        raise HTTPException(
            403,
            "CSRF check failed: a console request that changes something needs the page's "
            f"{CSRF_HEADER} header and must come from this server's own pages; nothing was changed.",
        )


def _from_cookie(request: Request, session: Session) -> Staff:
    if LOGIN_COOKIE not in request.cookies:
        raise HTTPException(
            401,
            "A staff token is required: send `Authorization: Bearer <token>`, or log in at /staff/login.",
            headers={"WWW-Authenticate": "Bearer"},
        )
    found = console_login(request, session)
    if found is None:
        raise HTTPException(
            401,
            "Your console login has expired or ended; log in again at /staff/login.",
            headers={"WWW-Authenticate": "Bearer"},
        )
    _check_csrf(request, found[1])
    return found[0]


def require_staff(
    request: Request, session: SessionDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Staff:
    if credentials is None:
        staff = _from_cookie(request, session)
    else:
        staff = repo.staff_by_token(session, token=credentials.credentials)
        if staff is None:
            raise HTTPException(
                401, "The staff token is wrong: no staff account has it.", headers={"WWW-Authenticate": "Bearer"}
            )
    if staff.disabled:
        raise HTTPException(403, DISABLED)
    return staff


StaffDep = Annotated[Staff, Depends(require_staff)]


def require_admin(staff: StaffDep) -> Staff:
    if staff.role != StaffRole.admin:
        raise HTTPException(403, "This needs an admin account.")
    return staff


AdminDep = Annotated[Staff, Depends(require_admin)]
