"""The playground looks right on a laptop and a phone: screenshots, and layout checks a person would notice.

The screenshots go to the test's temporary directory; with PARLEY_UPDATE_SCREENSHOTS=1 they also replace
docs/screenshots/*.png (shown in the README). SQLite only: this is about the page, not storage.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import httpx
import pytest
from playwright.async_api import Browser, Page

from tests.browser.playground import new_chat, open_playground, send_message, wait_until_answered
from tests.conftest import ApiUser, RunningParley, create_api_user, run_parley
from tests.databases import sqlite_database
from tests.turns.helpers import simulator_for

DOCS_SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
PHONE = {"width": 375, "height": 760}

# The open chat, answered by the built-in simulator as it answers anyone who runs Parley without an OpenAI key:
# a table, a list with a code block, and one of Parley's own tools. (The simulator picks an answer's shape by a
# hash of the question, so these questions are chosen for the shapes they get.)
QUESTIONS = (
    "Which database should I use for a small web app?",
    "How do I count error lines in a server log?",
    "Ask the calculator: what is 18 * 4 + 12?",
)
# Older chats in the sidebar, each with one exchange.
OTHER_CHATS = {
    "Birthday ideas for Sam": "Gift ideas for a friend who loves hiking and coffee?",
    "Refactor the billing module": "How should I split the billing module into smaller services?",
}


@dataclass(frozen=True)
class Scene:
    parley: RunningParley
    user: ApiUser
    session_id: str
    page: Page  # the desktop page that had the conversation (tool calls show live, not in stored history)


@pytest.fixture(scope="module")
async def scene(browser: Browser, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Scene]:
    """A user with a few chats, the open one with three answers (Markdown, a tool call), made through the page."""
    async with sqlite_database(tmp_path_factory.mktemp("screens")) as url:
        # Titles on: the open chat is named by the server after its first answer, as on a real deployment.
        with run_parley(url, "sqlite", tools=["current_time", "calculator"], title_model="gpt-4.1-mini") as parley:
            async with httpx.AsyncClient(base_url=parley.base_url, timeout=30) as http:
                user = await create_api_user(http, name="ada")
                await simulator_for(parley, http).configure(tokens_per_second=0, first_token_delay_ms=0)
                for title, question in OTHER_CHATS.items():
                    created = await http.post("/v1/sessions", json={"title": title}, headers=user.headers)
                    answered = await http.post(
                        f"/v1/sessions/{created.json()['id']}/messages",
                        json={"input": question, "stream": False},
                        headers=user.headers,
                    )
                    assert answered.json()["status"] == "completed", answered.text
                context = await browser.new_context(viewport={"width": 1280, "height": 800})
                page = await context.new_page()
                await open_playground(page, parley.base_url, user.key)
                session_id = await new_chat(page)
                for number, question in enumerate(QUESTIONS, start=1):
                    await send_message(page, question)
                    answer = await wait_until_answered(page, number)
                    assert await answer.get_attribute("data-status") == "completed"
                await page.evaluate("document.activeElement?.blur()")
                yield Scene(parley=parley, user=user, session_id=session_id, page=page)
                await context.close()


async def open_scene(page: Page, scene: Scene) -> None:
    await page.goto(f"{scene.parley.base_url}/#{scene.session_id}")
    await page.fill("#key-input", scene.user.key)
    await page.click("#key-save")
    await page.wait_for_selector("html[data-ready]")
    await wait_until_answered(page, len(QUESTIONS))
    # The caret blinks and "just now" ages: take them out of the picture.
    await page.evaluate("document.activeElement?.blur()")


def keep(shot: Path) -> None:
    """With PARLEY_UPDATE_SCREENSHOTS=1, into docs/screenshots, as a 256-colour PNG (a third of the bytes,
    and flat UI colours survive it) when Pillow is at hand."""
    if os.environ.get("PARLEY_UPDATE_SCREENSHOTS") != "1":
        return
    DOCS_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    target = DOCS_SCREENSHOTS / shot.name
    try:
        from PIL import Image
    except ImportError:
        shutil.copyfile(shot, target)
        return
    with Image.open(shot) as image:
        image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(target, optimize=True)


@pytest.mark.parametrize("scheme", ["light", "dark"])
async def test_desktop(scene: Scene, tmp_path: Path, scheme: Literal["light", "dark"]) -> None:
    page = scene.page
    await page.emulate_media(color_scheme=scheme)
    assert await page.locator("#sidebar").is_visible()
    assert await page.locator(".session-item").count() == 3
    assert await page.locator(".tool-call .tool-name").inner_text() == "calculator"
    assert (await page.locator(".tool-call .tool-state").inner_text()).startswith("done · ")
    assert await page.locator("#thread table").count() == 1
    assert await page.locator("#thread .code-block pre code").count() == 1
    assert await page.locator("#thread .code-block .copy-code").is_visible()
    assert await page.locator("#thread .reasoning").count() == len(QUESTIONS)
    assert await page.evaluate("document.documentElement.scrollWidth") <= 1280
    name = "playground-desktop.png" if scheme == "light" else "playground-desktop-dark.png"
    await page.screenshot(path=tmp_path / name)
    keep(tmp_path / name)


async def test_phone(browser: Browser, scene: Scene, tmp_path: Path) -> None:
    context = await browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True)
    page = await context.new_page()
    try:
        await open_scene(page, scene)
        # Nothing sticks out sideways; the sidebar waits behind the menu button; the composer is on screen.
        assert await page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        assert await page.locator("#menu").is_visible()
        assert await page.locator("#sidebar").evaluate("node => node.getBoundingClientRect().right") <= 0
        composer = await page.locator("#composer").bounding_box()
        assert composer is not None
        assert composer["y"] + composer["height"] <= PHONE["height"]
        assert composer["width"] <= PHONE["width"]
        await page.screenshot(path=tmp_path / "playground-phone.png")
        keep(tmp_path / "playground-phone.png")

        await page.locator("#menu").tap()
        await page.wait_for_function("() => document.getElementById('sidebar').getBoundingClientRect().left >= 0")
        await page.wait_for_timeout(250)  # the slide-in transition
        await page.screenshot(path=tmp_path / "playground-phone-sessions.png")
        keep(tmp_path / "playground-phone-sessions.png")
        await page.locator(".session-item:not(.active) .session-open").first.tap()
        await page.wait_for_function("() => document.getElementById('sidebar').getBoundingClientRect().right <= 0")
    finally:
        await context.close()
