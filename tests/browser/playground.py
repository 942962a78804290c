"""Driving the playground page, and recorded upstream streams for the simulator's replay fault."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import orjson
from playwright.async_api import Locator, Page

ASSISTANT = "#thread .msg.assistant"

# Samples the last answer's text length once per animation frame until its turn has ended; returns
# [[status, length], ...]. Started before the message is sent, so it waits for answer number `count`.
SAMPLE_GROWTH = """
async (count) => {
  const samples = [];
  const deadline = performance.now() + 30000;
  while (performance.now() < deadline) {
    const answers = document.querySelectorAll('#thread .msg.assistant');
    if (answers.length >= count) {
      const answer = answers[count - 1];
      const status = answer.dataset.status;
      samples.push([status, answer.querySelector('.content').textContent.length]);
      if (status !== 'streaming') break;
    }
    await new Promise((resolve) => requestAnimationFrame(resolve));
  }
  return samples;
}
"""


async def open_playground(page: Page, base_url: str, key: str) -> None:
    """Open the page and give it the key, as a person does the first time."""
    await page.goto(f"{base_url}/")
    await page.locator("#key-dialog").wait_for(state="visible")
    await page.fill("#key-input", key)
    await page.click("#key-save")
    await page.wait_for_selector("html[data-ready]")


async def new_chat(page: Page) -> str:
    """Click "New chat"; returns the new session's id (the page puts it in the URL's fragment)."""
    before = await page.evaluate("location.hash")
    await page.click("#new-session")
    await page.wait_for_function(
        "(before) => location.hash.startsWith('#sess_') && location.hash !== before", arg=before
    )
    session_id = str(await page.evaluate("location.hash.slice(1)"))
    await page.wait_for_function("(id) => document.documentElement.dataset.loaded === id", arg=session_id)
    return session_id


async def send_message(page: Page, text: str) -> None:
    await page.fill("#input", text)
    await page.press("#input", "Enter")


def answer(page: Page, number: int) -> Locator:
    """The assistant's answer number `number` (1-based) in the open session."""
    return page.locator(ASSISTANT).nth(number - 1)


async def wait_until_answered(page: Page, number: int, timeout_ms: float = 20000) -> Locator:
    """Waits until answer `number` has ended (any final status); returns it."""
    await page.wait_for_function(
        """(n) => {
          const a = document.querySelectorAll('#thread .msg.assistant')[n - 1];
          return a && a.dataset.status && a.dataset.status !== 'streaming';
        }""",
        arg=number,
        timeout=timeout_ms,
    )
    return answer(page, number)


async def content_text(locator: Locator) -> str:
    return str(await locator.locator(".content").evaluate("node => node.textContent"))


def recorded_answer(deltas: list[str], *, before_text: Sequence[tuple[str, dict[str, Any]]] = ()) -> str:
    """A complete upstream Responses stream that says `deltas`, for `{"kind": "replay", "sse": ...}`.

    `before_text` are extra (event name, payload) pairs sent before the message item, e.g. a function call.
    """
    response_id = f"resp_{uuid.uuid4().hex}"
    message_id = f"msg_{uuid.uuid4().hex}"
    text = "".join(deltas)
    base = {"id": response_id, "object": "response", "created_at": 1_700_000_000, "model": "gpt-5-mini"}
    events: list[tuple[str, dict[str, Any]]] = [
        ("response.created", {"response": {**base, "status": "in_progress", "output": [], "usage": None}}),
        *before_text,
        (
            "response.output_item.added",
            {
                "output_index": 0,
                "item": {
                    "id": message_id,
                    "type": "message",
                    "status": "in_progress",
                    "role": "assistant",
                    "content": [],
                },
            },
        ),
        *(
            (
                "response.output_text.delta",
                {"item_id": message_id, "output_index": 0, "content_index": 0, "delta": delta, "logprobs": []},
            )
            for delta in deltas
        ),
        ("response.output_text.done", {"item_id": message_id, "output_index": 0, "content_index": 0, "text": text}),
        (
            "response.completed",
            {
                "response": {
                    **base,
                    "status": "completed",
                    "output": [
                        {
                            "id": message_id,
                            "type": "message",
                            "status": "completed",
                            "role": "assistant",
                            "content": [{"type": "output_text", "text": text, "annotations": []}],
                        }
                    ],
                    "usage": {
                        "input_tokens": 12,
                        "input_tokens_details": {"cached_tokens": 0},
                        "output_tokens": len(deltas),
                        "output_tokens_details": {"reasoning_tokens": 0},
                        "total_tokens": 12 + len(deltas),
                    },
                }
            },
        ),
    ]
    frames = []
    for sequence, (name, payload) in enumerate(events):
        body = {"type": name, **payload, "sequence_number": sequence}
        frames.append(f"event: {name}\ndata: {orjson.dumps(body).decode()}\n\n")
    return "".join(frames)
