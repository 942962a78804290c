"""The playground's branches (edit, regenerate, the 2/2 version switcher, fork), export, and its model and prompt
pickers, in real headless Chromium against a real Parley and its simulator.

SQLite only, on a server of this module's own (with a list of allowed models for the picker): this is about the
page; tests/api covers the routes on both databases. Two scenario tests, since each browser test costs seconds.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Page, Request

from tests.browser.playground import (
    ASSISTANT,
    answer,
    content_text,
    new_chat,
    open_playground,
    rendered,
    send_message,
    wait_until_answered,
)
from tests.conftest import ApiUser, RunningParley, create_api_user, run_parley
from tests.databases import sqlite_database
from tests.turns.helpers import Simulator, open_stream, simulator_for

MODELS = ["gpt-5-mini", "gpt-4.1-mini"]
USER = "#thread .msg.user"


@pytest.fixture(scope="module")
async def web(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningParley]:
    async with sqlite_database(tmp_path_factory.mktemp("branches")) as url:
        with run_parley(url, "sqlite", allowed_models=MODELS) as running:
            yield running


@pytest.fixture
async def http(web: RunningParley) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=web.base_url, timeout=30) as client:
        yield client


@pytest.fixture
async def person(http: httpx.AsyncClient) -> ApiUser:
    return await create_api_user(http)


@pytest.fixture
async def sim(web: RunningParley, http: httpx.AsyncClient) -> AsyncIterator[Simulator]:
    simulator = simulator_for(web, http)
    await simulator.configure(tokens_per_second=0, first_token_delay_ms=0, output_tokens=None)
    yield simulator
    await simulator.configure(tokens_per_second=0, first_token_delay_ms=0, output_tokens=None)


async def branch(http: httpx.AsyncClient, person: ApiUser, session_id: str) -> list[dict[str, Any]]:
    """The session's active branch, as the API lists it."""
    listed = await http.get(f"/v1/sessions/{session_id}/messages", headers=person.headers)
    assert listed.status_code == 200, listed.text
    return list(listed.json()["data"])


async def wait_for_versions(page: Page, selector: str, position: str) -> None:
    """Waits until the message at `selector` shows the switcher at `position` (e.g. "2/2") and no answer streams."""
    await page.wait_for_function(
        """([selector, position]) => {
          const shown = document.querySelector(`${selector} .versions .version-position`);
          return shown?.textContent === position && !document.querySelector('#app.streaming')
            && !document.querySelector('#thread[aria-busy]');
        }""",
        arg=[selector, position],
    )


async def user_texts(page: Page) -> list[str]:
    return await page.locator(f"{USER} .bubble").all_inner_texts()


async def test_edit_switch_versions_regenerate_and_fork(
    page: Page, web: RunningParley, http: httpx.AsyncClient, person: ApiUser, sim: Simulator
) -> None:
    await open_playground(page, web.base_url, person.key)
    session_id = await new_chat(page)
    await send_message(page, "What should I pack for Lisbon?")
    await wait_until_answered(page, 1)
    first_answer = await content_text(answer(page, 1))
    # Once the answer is in, the message and the answer carry their ids and their actions.
    [asked, answered] = await branch(http, person, session_id)
    await page.locator(f"{USER}[data-message-id='{asked['id']}']").wait_for()
    await page.locator(f"{ASSISTANT}[data-message-id='{answered['id']}']").wait_for()

    # Edit: a textarea in place of the bubble; Cancel puts the bubble back, Save sends the new text.
    user = page.locator(USER).first
    await user.hover()
    await user.get_by_role("button", name="Edit message").click()
    editor = user.get_by_role("textbox", name="Edited message")
    assert await editor.input_value() == "What should I pack for Lisbon?"
    await user.get_by_role("button", name="Cancel").click()
    assert await user.locator(".bubble").is_visible()
    assert await editor.count() == 0

    await sim.configure(tokens_per_second=40, output_tokens=60)
    await user.hover()
    await user.get_by_role("button", name="Edit message").click()
    await editor.fill("What should I pack for Porto?")
    await user.get_by_role("button", name="Save").click()
    # The new answer streams where the old one was; meanwhile nothing may start or move another turn.
    await page.wait_for_selector(f"{ASSISTANT}[data-status='streaming']")
    assert await page.locator(ASSISTANT).count() == 1
    assert await user_texts(page) == ["What should I pack for Porto?"]
    assert await page.locator("#thread .turn-action:not(:disabled)").count() == 0
    await wait_for_versions(page, USER, "2/2")
    await sim.configure(tokens_per_second=0, output_tokens=None)

    edited = await branch(http, person, session_id)
    assert edited[0]["content"] == "What should I pack for Porto?"
    assert edited[0]["alternatives"]["index"] == 1
    second_answer = await content_text(answer(page, 1))
    assert second_answer == await rendered(page, edited[1]["content"])
    assert second_answer != first_answer
    assert await page.locator(f"{USER} .version-next").is_disabled()
    assert await page.locator("#thread .turn-action:not(:disabled)").count() > 0

    # The previous-version arrow goes back to the first version, with its own answer, and keeps the focus on the switcher.
    await page.locator(f"{USER} .version-previous").click()
    await wait_for_versions(page, USER, "1/2")
    assert await user_texts(page) == ["What should I pack for Lisbon?"]
    assert await content_text(answer(page, 1)) == first_answer
    assert await page.evaluate("document.activeElement.classList.contains('version-next')")
    assert (await branch(http, person, session_id))[0]["id"] == asked["id"]
    # The next-version arrow, by keyboard (it has the focus), comes back to the edit.
    await page.keyboard.press("Enter")
    await wait_for_versions(page, USER, "2/2")
    assert await user_texts(page) == ["What should I pack for Porto?"]

    # Regenerate: a new answer to the same message, with a switcher of its own.
    reply = answer(page, 1)
    await reply.hover()
    await reply.get_by_role("button", name="Regenerate answer").click()
    await wait_for_versions(page, ASSISTANT, "2/2")
    regenerated = await branch(http, person, session_id)
    assert regenerated[0]["content"] == "What should I pack for Porto?"
    assert regenerated[1]["alternatives"]["count"] == 2
    assert regenerated[1]["turn_id"] != edited[1]["turn_id"]
    assert await content_text(answer(page, 1)) == await rendered(page, regenerated[1]["content"])
    assert await page.locator(f"{USER} .version-position").inner_text() == "2/2"

    # Another tab starts a turn: the server refuses to move this one meanwhile (409), and the page says why.
    await sim.configure(tokens_per_second=25, output_tokens=400)
    async with open_stream(
        http, "POST", f"/v1/sessions/{session_id}/messages", json={"input": "elsewhere"}, headers=person.headers
    ) as (stream, source):
        assert stream.status == 200
        turn_id = (await anext(source.aiter_sse())).json()["turn"]["id"]
    try:
        await page.locator(f"{ASSISTANT} .version-previous").click()
        banner = page.locator("#error")
        await banner.wait_for()
        assert "still answering your previous message" in await banner.inner_text()
        assert await page.locator(f"{ASSISTANT} .version-position").inner_text() == "2/2"
    finally:
        await http.post(f"/v1/sessions/{session_id}/turns/{turn_id}/cancel", headers=person.headers)
        await sim.configure(tokens_per_second=0, output_tokens=None)
    await page.click("#error-close")

    # Fork from the first answer: a new chat with the history up to it, listed and opened.
    await page.reload()
    await page.wait_for_selector("html[data-ready]")
    reply = await wait_until_answered(page, 1)
    kept = await content_text(reply)
    await reply.hover()
    await reply.get_by_role("button", name="Fork from here").click()
    await page.wait_for_function(
        "(id) => location.hash.startsWith('#sess_') && location.hash !== `#${id}` "
        "&& document.documentElement.dataset.loaded === location.hash.slice(1)",
        arg=session_id,
    )
    fork_id = str(await page.evaluate("location.hash.slice(1)"))
    assert await page.locator(".session-item").count() == 2
    assert await page.locator(f".session-item.active[data-session-id='{fork_id}']").count() == 1
    assert await user_texts(page) == ["What should I pack for Porto?"]
    assert await content_text(answer(page, 1)) == kept
    forked = await branch(http, person, fork_id)
    assert [(m["role"], m["content"]) for m in forked] == [(m["role"], m["content"]) for m in regenerated[:2]]


def downloaded(path: Path) -> str:
    return path.read_text(encoding="utf-8")


async def test_export_downloads_and_the_model_picker_sends_the_model(
    page: Page, web: RunningParley, http: httpx.AsyncClient, person: ApiUser, sim: Simulator
) -> None:
    created = await http.post("/v1/sessions", json={"title": "Trip planning"}, headers=person.headers)
    session_id = created.json()["id"]
    await open_playground(page, web.base_url, person.key)
    await page.locator(f"[data-session-id='{session_id}'] .session-open").click()
    await page.wait_for_selector(f"html[data-loaded='{session_id}']")

    # The pickers list what GET /v1/config allows, after "(session default)", which is what a send uses at first.
    config = (await http.get("/v1/config", headers=person.headers)).json()
    models = await page.locator("#model-picker option").all_inner_texts()
    assert models == ["(session default)", *config["models"]["allowed"]] == ["(session default)", *MODELS]
    prompts = await page.locator("#prompt-picker option").all_inner_texts()
    assert prompts == ["(session default)", config["prompts"]["default"]]
    assert await page.input_value("#model-picker") == ""

    sent: list[Any] = []

    def record(request: Request) -> None:
        if request.method == "POST" and request.url.endswith("/messages"):
            sent.append(json.loads(request.post_data or "null"))

    page.on("request", record)
    await send_message(page, "What should I pack for Lisbon?")
    await wait_until_answered(page, 1)
    await page.select_option("#model-picker", "gpt-4.1-mini")
    await page.select_option("#prompt-picker", config["prompts"]["default"])
    await send_message(page, "And for Porto?")
    await wait_until_answered(page, 2)
    assert sent == [
        {"input": "What should I pack for Lisbon?", "stream": True},
        {
            "input": "And for Porto?",
            "model": "gpt-4.1-mini",
            "prompt": {"id": config["prompts"]["default"]},
            "stream": True,
        },
    ]
    upstream = [r["body"] for r in await sim.requests() if r["method"] == "POST" and r["path"] == "/v1/responses"]
    assert upstream[-1]["model"] == "gpt-4.1-mini"
    assert upstream[-1]["input"] == [{"role": "user", "content": "And for Porto?"}]
    assert [m["model"] for m in await branch(http, person, session_id) if m["role"] == "assistant"][-1].startswith(
        "gpt-4.1-mini"
    )

    # Export: a menu of formats; each choice downloads the file the API serves (with the key in its header).
    menu = page.get_by_label("Export this chat")
    await menu.click()
    async with page.expect_download() as markdown_download:
        await page.get_by_role("button", name="Markdown", exact=True).click()
    markdown = await markdown_download.value
    assert markdown.suggested_filename == "trip-planning.md"
    text = downloaded(Path(await markdown.path()))
    assert text.startswith("# Trip planning")
    assert "### You\n\nWhat should I pack for Lisbon?" in text
    assert await page.locator(".export-list").is_hidden()

    await menu.click()
    async with page.expect_download() as json_download:
        await page.get_by_role("button", name="JSON, all branches").click()
    exported = json.loads(downloaded(Path(await (await json_download.value).path())))
    assert exported["object"] == "session.export"
    assert exported["branches"] == "all"
    assert exported["session"]["id"] == session_id
    assert [m["content"] for m in exported["messages"] if m["role"] == "user"] == [
        "What should I pack for Lisbon?",
        "And for Porto?",
    ]
    assert all(m["on_active_branch"] for m in exported["messages"])
