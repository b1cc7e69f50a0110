"""How the store's refusals and outages look to clients: one mapping, used by the app's exception
handlers and by the vote fast path (`bot.server.routes.votes.VoteIngest`)."""

from __future__ import annotations

import logging

from sqlalchemy.exc import InterfaceError, OperationalError

from feedback.repo import Conflict, Invalid, NotFound

log = logging.getLogger(__name__)
DATABASE_DOWN = "The database is unavailable right now; nothing was changed. Try again shortly."
STATUS = {NotFound: 404, Invalid: 422, Conflict: 409}
HANDLED = (NotFound, Invalid, Conflict, OperationalError, InterfaceError)


def error_reply(exc: Exception) -> tuple[int, dict, dict]:
    """(status, JSON body, headers) for one of the `HANDLED` exceptions."""
    if isinstance(exc, (OperationalError, InterfaceError)):
        log.warning("database unavailable: %s", exc.__class__.__name__)
        return 503, {"detail": DATABASE_DOWN}, {"Retry-After": "5"}
    return next(code for kind, code in STATUS.items() if isinstance(exc, kind)), {"detail": str(exc)}, {}
