"""/docs and /redoc in real headless Chromium with nothing reachable but this machine: their scripts come from
this server, under its Content-Security-Policy."""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.async_api import BrowserContext, Page, Route

from tests.browser.conftest import PageProblems
from tests.conftest import RunningParley

OPERATIONS = ["/v1/sessions", "/v1/sessions/{session_id}/messages", "/v1/usage"]
# ReDoc's "API docs by Redocly" logo, always from Redocly's CDN: the policy blocks it, and ReDoc leaves it out.
REDOCLY_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"


@pytest.fixture
async def redoc_page(context: BrowserContext) -> AsyncIterator[Page]:
    tab = await context.new_page()
    problems = PageProblems(tab, blocked_on_purpose=(REDOCLY_LOGO,))
    yield tab
    assert problems.errors == []
    assert problems.dialogs == []


async def go_offline(page: Page) -> list[str]:
    """Aborts every request that is not to 127.0.0.1 (as a CDN is, offline); returns what was blocked."""
    blocked: list[str] = []

    async def only_loopback(route: Route) -> None:
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            await route.continue_()
        else:
            blocked.append(route.request.url)
            await route.abort("internetdisconnected")

    await page.route("**/*", only_loopback)
    return blocked


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
async def test_the_docs_pages_run_no_inline_script_but_their_own(parley: RunningParley, path: str) -> None:
    async with httpx.AsyncClient(base_url=parley.base_url) as http:
        page = await http.get(path)
    assert page.status_code == 200
    directives = dict(d.strip().split(" ", 1) for d in page.headers["content-security-policy"].split(";"))
    assert directives["default-src"] == "'self'"
    # This server's scripts, and the page's own inline script (Swagger UI's start-up) by its hash alone.
    assert directives["script-src"].startswith("'self'")
    assert "unsafe" not in directives["script-src"]
    assert "http" not in page.text.replace(f"{parley.base_url}", "")


async def test_swagger_ui_lists_the_operations_offline(page: Page, parley: RunningParley) -> None:
    blocked = await go_offline(page)
    await page.goto(f"{parley.base_url}/docs")
    await page.locator(".opblock").first.wait_for()
    paths = await page.locator(".opblock-summary-path").evaluate_all("nodes => nodes.map((node) => node.dataset.path)")
    for operation in OPERATIONS:
        assert operation in paths
    # "Try it out" needs the bearer scheme: the Authorize button is there.
    assert await page.locator(".auth-wrapper .authorize").is_visible()
    assert blocked == []


async def test_redoc_lists_the_operations_offline(redoc_page: Page, parley: RunningParley) -> None:
    page = redoc_page
    blocked = await go_offline(page)
    await page.goto(f"{parley.base_url}/redoc")
    await page.get_by_role("heading", name="Parley (0.1.0)").wait_for()
    # Each operation's box shows its method and path.
    paths = await page.locator("button > span.http-verb + span").evaluate_all(
        "nodes => nodes.map((node) => node.textContent)"
    )
    for operation in OPERATIONS:
        assert operation in paths
    # Search runs in its worker (made from a blob: URL the policy allows).
    await page.get_by_placeholder("Search...").fill("usage")
    await page.locator("[data-role='search:results'] li").first.wait_for()
    assert blocked == []
