"""Fixtures of the browser tests: Debian's Chromium."""

from __future__ import annotations

import pytest

from tests.support.services import launch_chromium


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium driven by Python playwright (through `executable_path`: never a browser download)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = launch_chromium(p)
        yield browser
        browser.close()
