"""Driving the playground page, and recorded upstream streams for the simulator's replay fault."""

from __future__ import annotations

import bisect
import re
import uuid
from collections.abc import Sequence
from typing import Any

import orjson
from playwright.async_api import Locator, Page

ASSISTANT = "#thread .msg.assistant"

# Samples the last answer's shown text once per animation frame until its turn has ended; returns
# [[status, text], ...]. Started before the message is sent, so it waits for answer number `count`.
SAMPLE_GROWTH = """
async (count) => {
  const samples = [];
  const deadline = performance.now() + 30000;
  while (performance.now() < deadline) {
    const answers = document.querySelectorAll('#thread .msg.assistant');
    if (answers.length >= count) {
      const answer = answers[count - 1];
      const status = answer.dataset.status;
      samples.push([status, answer.querySelector('.content').textContent]);
      if (status !== 'streaming') break;
    }
    await new Promise((resolve) => requestAnimationFrame(resolve));
  }
  return samples;
}
"""

# The text a reader sees for each Markdown source, as the playground's own renderer (markdown.js) shows it.
RENDER_MARKDOWN = """
async (sources) => {
  const {renderMarkdown} = await import('/web/markdown.js');
  return sources.map((source) => {
    const node = document.createElement('div');
    node.append(renderMarkdown(source));
    return node.textContent;
  });
}
"""


async def rendered(page: Page, markdown: str) -> str:
    """What the page shows for the Markdown `markdown` (a stored answer's `output_text`)."""
    [text] = await page.evaluate(RENDER_MARKDOWN, [markdown])
    return str(text)


async def assert_streamed_in_order(page: Page, shown: Sequence[str], markdown: str) -> None:
    """Each of `shown` (the answer's text frame after frame) is the rendering of a prefix of `markdown`, and the
    prefixes never go back: no text out of order, repeated or lost, though a frame may show a few characters
    fewer than the one before (partial Markdown, such as `**bold` before its closing `**`, renders longer)."""
    prefixes: list[str] = await page.evaluate(RENDER_MARKDOWN, [markdown[:end] for end in range(len(markdown) + 1)])
    ends: dict[str, list[int]] = {}
    for end, text in enumerate(prefixes):
        ends.setdefault(text, []).append(end)
    at = 0
    for frame, text in enumerate(shown):
        candidates = ends.get(text, [])
        index = bisect.bisect_left(candidates, at)
        assert index < len(candidates), f"frame {frame} shows {text!r}: no rendering of a prefix at least {at} long"
        at = candidates[index]


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


def recorded_answer(
    deltas: list[str],
    *,
    before_text: Sequence[tuple[str, dict[str, Any]]] = (),
    annotations: Sequence[dict[str, Any]] = (),
) -> str:
    """A complete upstream Responses stream that says `deltas`, for `{"kind": "replay", "sse": ...}`.

    `before_text` are extra (event name, payload) pairs sent before the message item, e.g. a function call;
    `annotations` (e.g. URL citations) go with the answer's text.
    """
    response_id = f"resp_{uuid.uuid4().hex}"
    message_id = f"msg_{uuid.uuid4().hex}"
    text = "".join(deltas)
    message = {
        "id": message_id,
        "type": "message",
        "status": "completed",
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": list(annotations)}],
    }
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
        ("response.output_item.done", {"output_index": 0, "item": message}),
        (
            "response.completed",
            {
                "response": {
                    **base,
                    "status": "completed",
                    "output": [message],
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


def reasoning_summary(summaries: Sequence[str], *, item_id: str = "rs_1") -> list[tuple[str, dict[str, Any]]]:
    """A reasoning item whose summary streams word by word, as `before_text` for `recorded_answer`."""
    item: dict[str, Any] = {"id": item_id, "type": "reasoning", "summary": []}
    events: list[tuple[str, dict[str, Any]]] = [("response.output_item.added", {"output_index": 0, "item": item})]
    for index, text in enumerate(summaries):
        where = {"item_id": item_id, "output_index": 0, "summary_index": index}
        events.append(
            ("response.reasoning_summary_part.added", {**where, "part": {"type": "summary_text", "text": ""}})
        )
        events.extend(
            ("response.reasoning_summary_text.delta", {**where, "delta": word}) for word in re.findall(r"\s*\S+", text)
        )
        events.append(("response.reasoning_summary_text.done", {**where, "text": text}))
    done = {**item, "summary": [{"type": "summary_text", "text": text} for text in summaries]}
    events.append(("response.output_item.done", {"output_index": 0, "item": done}))
    return events


# An init script: the page's event streams pause before their first answer text until `window.releaseAnswer()`,
# so a test can look at the page as it is mid-stream. (Frames pass whole; nothing else is changed.)
HOLD_ANSWER_TEXT = """
(() => {
  const realFetch = window.fetch.bind(window);
  let release;
  const released = new Promise((resolve) => { release = resolve; });
  window.releaseAnswer = () => release();
  window.fetch = async (...args) => {
    const response = await realFetch(...args);
    if (!(response.headers.get('content-type') || '').startsWith('text/event-stream')) return response;
    const decoder = new TextDecoder();
    const encoder = new TextEncoder();
    let buffer = '';
    const body = response.body.pipeThrough(new TransformStream({
      async transform(chunk, controller) {
        buffer += decoder.decode(chunk, {stream: true});
        let end;
        while ((end = buffer.indexOf('\\n\\n')) !== -1) {
          const frame = buffer.slice(0, end + 2);
          buffer = buffer.slice(end + 2);
          if (/^event: response\\.output_text\\.delta$/m.test(frame)) await released;
          controller.enqueue(encoder.encode(frame));
        }
      },
      flush(controller) { if (buffer) controller.enqueue(encoder.encode(buffer)); },
    }));
    return new Response(body, {status: response.status, statusText: response.statusText, headers: response.headers});
  };
})();
"""
