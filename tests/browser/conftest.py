"""Real headless Chromium for the playground, parley.js and CORS tests.

Chromium comes from the system (PARLEY_CHROMIUM, default /usr/bin/chromium), never from `playwright
install`. Without it these tests are skipped on a laptop and fail under CI=true.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, BrowserContext, ConsoleMessage, Dialog, Page, async_playwright

from tests.databases import in_ci

CHROMIUM = Path(os.environ.get("PARLEY_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DESKTOP = {"width": 1280, "height": 800}


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    if not CHROMIUM.exists():
        message = f"Chromium not found at {CHROMIUM} (set PARLEY_CHROMIUM)"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        await launched.close()


@pytest.fixture
async def context(browser: Browser) -> AsyncIterator[BrowserContext]:
    """A fresh profile per test: empty localStorage, desktop viewport."""
    ctx = await browser.new_context(viewport=DESKTOP)
    yield ctx
    await ctx.close()


class PageProblems:
    """What a page must never do: throw, break its Content-Security-Policy, or open a dialog (an XSS)."""

    def __init__(self, page: Page, *, blocked_on_purpose: tuple[str, ...] = ()) -> None:
        """`blocked_on_purpose`: URLs whose blocking by the policy is expected (and reported in the console)."""
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        self.blocked_on_purpose = blocked_on_purpose
        page.on("pageerror", lambda error: self.errors.append(f"uncaught: {error}"))
        page.on("console", self._console)
        page.on("dialog", self._dialog)

    def _console(self, message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text and not any(
            f"'{url}'" in message.text for url in self.blocked_on_purpose
        ):
            self.errors.append(f"CSP: {message.text}")

    async def _dialog(self, dialog: Dialog) -> None:
        self.dialogs.append(dialog.message)
        await dialog.dismiss()


@pytest.fixture
async def page(context: BrowserContext) -> AsyncIterator[Page]:
    tab = await context.new_page()
    problems = PageProblems(tab)
    yield tab
    assert problems.errors == []
    assert problems.dialogs == []
