"""The CLI's settings: `SUPPORTLOOP_*` variables, read when a command runs (never at import)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bot.server.settings import Settings


def load_settings() -> Settings:
    from bot.server.settings import Settings

    return Settings()
