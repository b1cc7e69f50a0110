"""`Annotated` dependencies: the store session, the chat service, the authenticated staff member."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from starlette.requests import HTTPConnection
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlmodel import Session

from bot.chat import ChatService
from feedback import repo
from feedback.models import Staff, StaffRole


def get_session(request: Request) -> Iterator[Session]:
    with request.app.state.store.session() as session:
        yield session


def client_address(connection: HTTPConnection) -> str:
    """The client's address (behind a proxy, uvicorn's --proxy-headers makes this the real client)."""
    return connection.client.host if connection.client else "unknown"


def get_chat(request: Request) -> ChatService:
    return request.app.state.chat


SessionDep = Annotated[Session, Depends(get_session)]
ChatDep = Annotated[ChatService, Depends(get_chat)]
_bearer = HTTPBearer(auto_error=False)


def require_staff(session: SessionDep,
                  credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> Staff:
    if credentials is None:
        raise HTTPException(401, "A staff token is required: send `Authorization: Bearer <token>`.",
                            headers={"WWW-Authenticate": "Bearer"})
    staff = repo.staff_by_token(session, token=credentials.credentials)
    if staff is None:
        raise HTTPException(401, "The staff token is wrong: no staff account has it.", headers={"WWW-Authenticate": "Bearer"})
    if staff.disabled:
        raise HTTPException(403, "This staff account is disabled; ask an admin.")
    return staff


StaffDep = Annotated[Staff, Depends(require_staff)]


def require_admin(staff: StaffDep) -> Staff:
    if staff.role != StaffRole.admin:
        raise HTTPException(403, "This needs an admin account.")
    return staff


AdminDep = Annotated[Staff, Depends(require_admin)]
