"""The CLI's settings: `SUPPORTLOOP_*` variables, read when a command runs (never at import)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bot.server.settings import Settings


class BadSettings(ValueError):
    """A `SUPPORTLOOP_*` variable has a value that cannot be used; the message names it and says why."""


def load_settings() -> Settings:
    from pydantic import ValidationError

    from bot.server.settings import Settings

    try:
        return Settings()
    except ValidationError as exc:
        raise BadSettings(describe(exc)) from None


def describe(exc) -> str:
    """One line per bad variable: its name and pydantic's reason, without the traceback."""
    lines = []
    for error in exc.errors():
        name = "SUPPORTLOOP_" + "_".join(str(part) for part in error.get("loc", ())).upper()
        lines.append(f"{name}: {error.get('msg', 'invalid value')}")
    return "bad settings:\n  " + "\n  ".join(lines)
