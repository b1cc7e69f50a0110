"""Staff console logins: a staff token is exchanged once for a login whose random cookie token the
browser keeps (http-only), plus a CSRF token the console sends back on every state-changing request.
Only the cookie token's hash is stored; a login ends at its expiry or on logout, and a disabled
account's logins stop working at once (the account is checked on every request)."""

from __future__ import annotations

import secrets
from datetime import timedelta
from typing import cast

from sqlmodel import Session, col, delete, select

from feedback.models import Staff, StaffLogin, utcnow
from feedback.repo import audit_action
from feedback.tokens import hash_token, new_token


def open_login(session: Session, *, staff: Staff, hours: float) -> tuple[str, StaffLogin]:
    """A new login of `staff` for `hours`: the cookie token (shown only now) and its row. Expired
    logins of everyone are swept out on the way."""
    now = utcnow()
    session.exec(delete(StaffLogin).where(col(StaffLogin.expires_at) < now))
    token = new_token()
    login = StaffLogin(
        token_hash=hash_token(token),
        staff_id=cast(int, staff.id),
        csrf_token=secrets.token_urlsafe(32),
        created_at=now,
        expires_at=now + timedelta(hours=hours),
    )
    session.add(login)
    audit_action(session, staff, "staff.login", str(staff.id))
    session.commit()
    return token, login


def find_login(session: Session, *, token: str) -> tuple[Staff, StaffLogin] | None:
    """The staff member and login a cookie token belongs to, while the login has not expired."""
    row = session.exec(
        select(Staff, StaffLogin)
        .join(StaffLogin, col(StaffLogin.staff_id) == Staff.id)
        .where(StaffLogin.token_hash == hash_token(token), StaffLogin.expires_at > utcnow())
    ).first()
    return (row[0], row[1]) if row else None


def close_login(session: Session, *, staff: Staff, login: StaffLogin) -> None:
    """Log out: the login (found by `find_login`) ends, its cookie token stops working."""
    session.delete(login)
    audit_action(session, staff, "staff.logout", str(staff.id))
    session.commit()
