"""The playground's attachments in real headless Chromium against a real Parley and its simulator: attach by the
file input, drop and paste, upload progress, remove, a refused type, Send waiting for an upload, and the files
shown in the sent message (live and after a reload) and named in the simulator's answer.

SQLite only, one scenario: tests/api/test_files.py covers the routes; this is about the page.
"""

from __future__ import annotations

import asyncio
import struct
import zlib
from collections.abc import AsyncIterator

import httpx
import pytest
from playwright.async_api import Page, Route

from tests.browser.playground import content_text, new_chat, open_playground, wait_until_answered
from tests.conftest import ApiUser, RunningParley, create_api_user, run_parley
from tests.databases import sqlite_database

USER = "#thread .msg.user"
PENDING = "#attachments .attachment"

# Puts files on the page as a drop on the composer or a paste into the message box would: [[name, type, text]].
DROP_OR_PASTE = """
([how, files]) => {
  const data = new DataTransfer();
  for (const [name, type, text] of files) data.items.add(new File([text], name, {type}));
  if (how === 'drop') {
    const target = document.getElementById('composer');
    target.dispatchEvent(new DragEvent('dragenter', {dataTransfer: data, bubbles: true, cancelable: true}));
    target.dispatchEvent(new DragEvent('drop', {dataTransfer: data, bubbles: true, cancelable: true}));
  } else {
    const target = document.getElementById('input');
    target.dispatchEvent(new ClipboardEvent('paste', {clipboardData: data, bubbles: true, cancelable: true}));
  }
}
"""


def png(width: int = 4, height: int = 3) -> bytes:
    """A small valid PNG (an orange rectangle)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    rows = b"".join(b"\x00" + b"\xff\x80\x00" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
async def web(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningParley]:
    async with sqlite_database(tmp_path_factory.mktemp("attachments")) as url:
        with run_parley(url, "sqlite") as running:
            yield running


@pytest.fixture
async def person(web: RunningParley) -> ApiUser:
    async with httpx.AsyncClient(base_url=web.base_url, timeout=30) as http:
        return await create_api_user(http)


async def assert_message_shows_files(page: Page) -> None:
    user = page.locator(USER).first
    image = user.locator(".attachment.image img")
    await page.wait_for_function(
        "() => { const img = document.querySelector('#thread .msg.user .attachment.image img');"
        " return img && img.complete && img.naturalWidth === 4; }"
    )
    assert (await image.get_attribute("alt")) == "holiday.png"
    assert str(await image.get_attribute("src")).startswith("data:image/png;base64,")
    chip = user.locator(".attachment.file")
    assert await chip.count() == 1
    assert (await chip.locator(".attachment-name").text_content()) == "notes.txt"
    assert (await chip.locator(".attachment-meta").text_content()) == "Text · 20 B"
    assert (await user.locator(".bubble").text_content()) == "What are these?"


async def test_attach_drop_paste_upload_send_and_reload(page: Page, web: RunningParley, person: ApiUser) -> None:
    await open_playground(page, web.base_url, person.key)
    session_id = await new_chat(page)

    # The image's upload is held until the test lets it go, so its progress bar and a waiting Send can be seen.
    release = asyncio.Event()

    async def hold_the_image(route: Route) -> None:
        if b'filename="holiday.png"' in (route.request.post_data_buffer or b""):
            await release.wait()
        await route.continue_()

    await page.route("**/v1/files", hold_the_image)

    await page.set_input_files("#file-input", files=[{"name": "holiday.png", "mimeType": "image/png", "buffer": png()}])
    await page.evaluate(DROP_OR_PASTE, ["drop", [["notes.txt", "text/plain", "Pack sun cream, hat."]]])
    await page.evaluate(DROP_OR_PASTE, ["paste", [["scratch.md", "text/markdown", "# scratch"]]])
    await page.locator(f"{PENDING}[data-state='uploaded']").nth(1).wait_for()
    names = await page.locator(f"{PENDING} .attachment-name").all_text_contents()
    assert names == ["holiday.png", "notes.txt", "scratch.md"]
    holiday = page.locator(PENDING).first
    assert await holiday.get_attribute("data-state") == "uploading"
    assert await holiday.locator("progress").is_visible()
    assert (await holiday.locator(".attachment-meta").text_content()) == f"PNG · {len(png())} B"

    # The remove button takes one off; a file Parley does not take (text named .png) is refused with the server's words.
    await page.get_by_role("button", name="Remove scratch.md").click()
    await page.evaluate(DROP_OR_PASTE, ["drop", [["fake.png", "image/png", "not an image at all"]]])
    await page.locator("#error:not([hidden])").wait_for()
    assert "not accepted" in str(await page.locator("#error-text").text_content())
    assert await page.locator(f"{PENDING} .attachment-name").all_text_contents() == ["holiday.png", "notes.txt"]

    # Send waits for the image's upload, then sends the text with both files.
    await page.fill("#input", "What are these?")
    await page.press("#input", "Enter")
    await page.locator("#composer[data-waiting]").wait_for()
    assert await page.locator(USER).count() == 0
    release.set()
    answered = await wait_until_answered(page, 1)
    assert await page.locator("#attachments").is_hidden()
    assert await page.locator("#error").is_hidden()
    text = await content_text(answered)
    assert "I see the image holiday.png." in text
    assert "I read the file notes.txt." in text
    await assert_message_shows_files(page)

    await page.reload()
    await page.wait_for_function("(id) => document.documentElement.dataset.loaded === id", arg=session_id)
    await assert_message_shows_files(page)
