"""The playground at GET / in real headless Chromium, against a real Parley and its simulator."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, BrowserContext, Locator, Page, Request, Route

from tests.browser.conftest import PageProblems
from tests.browser.playground import (
    ASSISTANT,
    HOLD_ANSWER_TEXT,
    SAMPLE_GROWTH,
    answer,
    assert_streamed_in_order,
    content_text,
    new_chat,
    open_playground,
    reasoning_summary,
    recorded_answer,
    rendered,
    send_message,
    wait_until_answered,
)
from tests.conftest import ApiUser, RunningParley, create_api_user, run_parley
from tests.tcp_proxy import FaultProxy
from tests.turns.helpers import Simulator, open_stream, simulator_for, turn_of

# Slow enough to watch: about 30 tokens a second.
WATCHABLE = {"tokens_per_second": 30, "output_tokens": 45}
LONG = {"tokens_per_second": 25, "output_tokens": 400}
PHONE = {"width": 375, "height": 760}


@pytest.fixture(scope="module")
def web(database_url: str, backend: str) -> Iterator[RunningParley]:
    """A server of this module's own (the simulator's pacing is per server), with Parley's own tools on."""
    with run_parley(database_url, backend, tools=["current_time", "calculator"]) as running:
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


class Tunnel(FaultProxy):
    """The fault proxy, stopped so that no connection the browser opened is left unclosed: first stop
    accepting, then give aborted transports a moment to close before the proxy's loop ends."""

    def stop(self) -> None:
        self.cut()

        async def quiesce() -> None:
            if self._server is not None:
                self._server.close()
            await asyncio.sleep(0.1)

        asyncio.run_coroutine_threadsafe(quiesce(), self._loop).result(timeout=10)
        super().stop()


async def stored_turn(
    http: httpx.AsyncClient, person: ApiUser, session_id: str, page: Page, number: int
) -> dict[str, Any]:
    """The turn behind answer `number`, as the API stores it."""
    turn_id = await answer(page, number).get_attribute("data-turn-id")
    assert turn_id
    return await turn_of(http, person, session_id, turn_id)


async def test_the_page_is_served_with_a_strict_content_security_policy(http: httpx.AsyncClient) -> None:
    page = await http.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "default-src 'self'" in policy
    assert "script-src 'self'" in policy
    assert "unsafe-inline" not in policy
    assert '<script type="module" src="/web/app.js">' in page.text
    for module in ("app.js", "parley.js", "markdown.js", "format.js"):
        served = await http.get(f"/web/{module}")
        assert served.status_code == 200
        assert served.headers["content-type"].startswith("text/javascript")
        assert "innerHTML" not in served.text


async def test_an_answer_streams_in_token_by_token_and_survives_a_reload(
    page: Page, web: RunningParley, http: httpx.AsyncClient, person: ApiUser, sim: Simulator
) -> None:
    await sim.configure(**WATCHABLE)
    await open_playground(page, web.base_url, person.key)
    session_id = await new_chat(page)

    sampling = asyncio.ensure_future(page.evaluate(SAMPLE_GROWTH, 1))
    await send_message(page, "What should I pack for Lisbon in May?")
    samples = await sampling

    statuses = [status for status, _ in samples]
    assert statuses[-1] == "completed"
    turn = await stored_turn(http, person, session_id, page, 1)
    assert turn["status"] == "completed"
    # The stored answer is Markdown; the page shows it rendered (so the text compared here is not its source).
    final = await rendered(page, turn["output_text"])
    assert final != turn["output_text"]
    assert samples[-1][1] == final
    # The text grew over many frames before turn.completed, never all at once ...
    partial = {text for status, text in samples if status == "streaming" and text and text != final}
    assert len(partial) >= 5, samples
    # ... and in order: each frame shows a longer start of the answer than the last (rendered as Markdown so
    # far), never a jumble, a repeat or a step back.
    await assert_streamed_in_order(page, [text for _, text in samples], turn["output_text"])

    first = answer(page, 1)
    assert await content_text(first) == final
    meta = await first.locator(".turn-meta").inner_text()
    assert f"{turn['usage']['total_tokens']} tokens" in meta
    assert "$0." in meta

    await page.reload()
    await page.wait_for_selector("html[data-ready]")
    await wait_until_answered(page, 1)
    assert await page.locator("#thread .msg.user .bubble").inner_text() == "What should I pack for Lisbon in May?"
    assert await content_text(answer(page, 1)) == final
    assert f"{turn['usage']['total_tokens']} tokens" in await answer(page, 1).locator(".turn-meta").inner_text()


async def test_a_chat_is_named_by_the_server_after_its_first_answer(
    page: Page, database_url: str, backend: str
) -> None:
    # A server of its own with titles on (the module's has them off, as the suite does).
    with run_parley(database_url, backend, title_model="gpt-4.1-mini") as titled:
        async with httpx.AsyncClient(base_url=titled.base_url, timeout=30) as http:
            person = await create_api_user(http)
            await open_playground(page, titled.base_url, person.key)
            session_id = await new_chat(page)
            await send_message(page, "What should I pack for Lisbon in May?")
            await wait_until_answered(page, 1)

            # The title comes after the answer's end; the page asks again and shows it, in the sidebar and the header.
            row_title = page.locator(f"[data-session-id='{session_id}'] .session-title")
            await page.wait_for_function(
                "(id) => document.querySelector(`[data-session-id='${id}'] .session-title`)?.textContent !== "
                "'Untitled chat'",
                arg=session_id,
                timeout=15000,
            )
            stored = (await http.get(f"/v1/sessions/{session_id}", headers=person.headers)).json()
            assert stored["title_source"] == "auto"
            assert await row_title.inner_text() == stored["title"]
            assert await page.locator("#session-title").inner_text() == stored["title"]


async def test_sessions_are_created_renamed_and_deleted(
    page: Page, web: RunningParley, http: httpx.AsyncClient, person: ApiUser
) -> None:
    await open_playground(page, web.base_url, person.key)
    first = await new_chat(page)
    second = await new_chat(page)
    assert await page.locator(".session-item").count() == 2

    item = page.locator(f"[data-session-id='{first}']")
    await item.hover()
    await item.locator(".session-rename").click()
    await page.fill("#rename-input", "Trip planning")
    await page.press("#rename-input", "Enter")
    await page.wait_for_function(
        "(id) => document.querySelector(`[data-session-id='${id}'] .session-title`)?.textContent === 'Trip planning'",
        arg=first,
    )
    stored = await http.get(f"/v1/sessions/{first}", headers=person.headers)
    assert stored.json()["title"] == "Trip planning"

    item = page.locator(f"[data-session-id='{second}']")
    await item.hover()
    await item.locator(".session-delete").click()
    await page.click("#confirm-ok")
    await page.locator(f"[data-session-id='{second}']").wait_for(state="detached")
    assert (await http.get(f"/v1/sessions/{second}", headers=person.headers)).status_code == 404
    assert await page.locator(".session-item").count() == 1


async def test_stop_cancels_the_turn_and_keeps_the_partial_answer(
    page: Page, web: RunningParley, http: httpx.AsyncClient, person: ApiUser, sim: Simulator
) -> None:
    await sim.configure(**LONG)
    await open_playground(page, web.base_url, person.key)
    session_id = await new_chat(page)
    await send_message(page, "Tell me a long story")
    await page.wait_for_function(
        "() => document.querySelector('#thread .msg.assistant .content')?.textContent.length > 40"
    )
    assert await page.locator("#send").is_hidden()
    await page.click("#stop")

    stopped = await wait_until_answered(page, 1)
    assert await stopped.get_attribute("data-status") == "cancelled"
    assert await stopped.locator(".badge").inner_text() == "Stopped"
    turn = await stored_turn(http, person, session_id, page, 1)
    assert turn["status"] == "cancelled"
    kept = await content_text(stopped)
    assert len(kept) > 40
    assert kept == await rendered(page, turn["output_text"])
    assert turn["usage"]["output_tokens"] < LONG["output_tokens"]
    assert await page.locator("#send").is_visible()


async def test_the_answer_continues_after_the_network_is_cut(
    context: BrowserContext, page: Page, web: RunningParley, http: httpx.AsyncClient, person: ApiUser, sim: Simulator
) -> None:
    """The browser reaches Parley through a TCP proxy that drops every connection mid-answer (and the
    browser goes offline meanwhile); parley.js re-attaches with Last-Event-ID once it is back."""
    port = int(web.base_url.rsplit(":", 1)[1])
    proxy = Tunnel("127.0.0.1", port)
    proxy_port = proxy.start()
    try:
        resumes: list[Request] = []
        page.on("request", lambda r: resumes.append(r) if r.url.endswith("/events") else None)
        await sim.configure(tokens_per_second=60, output_tokens=180)
        await open_playground(page, f"http://127.0.0.1:{proxy_port}", person.key)
        session_id = await new_chat(page)
        await send_message(page, "Keep talking while I go through a tunnel")
        await page.wait_for_function(
            "() => document.querySelector('#thread .msg.assistant .content')?.textContent.length > 30"
        )

        proxy.cut()
        await context.set_offline(True)
        await answer(page, 1).locator(".badge.reconnect").wait_for()
        cut_at = len(await content_text(answer(page, 1)))
        await asyncio.sleep(0.6)
        await context.set_offline(False)
        proxy.restore()

        finished = await wait_until_answered(page, 1)
        assert await finished.get_attribute("data-status") == "completed"
        turn = await stored_turn(http, person, session_id, page, 1)
        text = await content_text(finished)
        # No gap and no repeat: exactly the stored answer, which went on while the browser was away.
        assert text == await rendered(page, turn["output_text"])
        assert len(text) > cut_at
        assert resumes, "the page never re-attached"
        last_event_id = await resumes[-1].header_value("last-event-id")
        assert last_event_id is not None
        assert int(last_event_id) > 1
    finally:
        await page.close()
        proxy.stop()


EVENT_SOURCE_COLLECT = """
(url) => new Promise((resolve, reject) => {
  const names = ['turn.created', 'response.created', 'response.queued', 'response.in_progress',
    'response.output_item.added',
    'response.output_item.done', 'response.content_part.added', 'response.content_part.done',
    'response.output_text.delta', 'response.output_text.done', 'response.reasoning_summary_part.added',
    'response.reasoning_summary_text.delta', 'response.reasoning_summary_text.done',
    'response.reasoning_summary_part.done', 'response.completed', 'turn.completed',
    'turn.failed', 'turn.cancelled', 'turn.incomplete'];
  const events = [];
  const source = new EventSource(url);
  for (const name of names) {
    source.addEventListener(name, (e) => {
      events.push({id: Number(e.lastEventId), name, data: JSON.parse(e.data)});
      if (name.startsWith('turn.') && name !== 'turn.created') { source.close(); resolve(events); }
    });
  }
  setTimeout(() => { source.close(); reject(new Error('timeout: ' + JSON.stringify(events.map(e => e.name)))); }, 20000);
})
"""


async def test_a_native_event_source_on_stream_url_receives_the_whole_turn(
    page: Page, web: RunningParley, http: httpx.AsyncClient, person: ApiUser, sim: Simulator
) -> None:
    await sim.configure(**WATCHABLE)
    await open_playground(page, web.base_url, person.key)
    session_id = await new_chat(page)
    async with open_stream(
        http, "POST", f"/v1/sessions/{session_id}/messages", json={"input": "stream me"}, headers=person.headers
    ) as (stream, source):
        assert stream.status == 200
        created = await anext(source.aiter_sse())
    stream_url = created.json()["turn"]["stream_url"]
    assert "token=" in stream_url

    events = await page.evaluate(EVENT_SOURCE_COLLECT, stream_url)
    assert [e["id"] for e in events] == list(range(1, len(events) + 1))
    assert events[0]["name"] == "turn.created"
    assert events[-1]["name"] == "turn.completed"
    text = "".join(e["data"]["delta"] for e in events if e["name"] == "response.output_text.delta")
    assert text == events[-1]["data"]["turn"]["output_text"]
    assert text


HOSTILE = [
    "Here is **bold**, *italic* and `<b>code</b>`.\n\n",
    "<img src=x onerror=alert(1)> and <script>window.__pwned = true; alert(2)</script>\n\n",
    "- a [safe link](https://example.com/docs)\n",
    "- a [bad link](javascript:alert(3))\n",
    '- <a href="javascript:alert(4)">raw anchor</a>\n\n',
    '```html\n<iframe src="https://example.com"></iframe>\n```\n',
]


async def test_html_in_model_output_is_shown_as_text(
    page: Page, web: RunningParley, http: httpx.AsyncClient, person: ApiUser, sim: Simulator
) -> None:
    function_call: dict[str, Any] = {
        "output_index": 0,
        "item": {
            "id": "fc_1",
            "type": "function_call",
            "status": "in_progress",
            "call_id": "call_weather",
            "name": "get_weather",
            "arguments": "",
        },
    }
    done_call = {
        **function_call,
        "item": {**function_call["item"], "status": "completed", "arguments": '{"city":"Lisbon"}'},
    }
    await sim.faults(
        {
            "kind": "replay",
            "sse": recorded_answer(
                HOSTILE,
                before_text=[("response.output_item.added", function_call), ("response.output_item.done", done_call)],
            ),
        }
    )
    await open_playground(page, web.base_url, person.key)
    session_id = await new_chat(page)
    await send_message(page, "Say something nasty")
    reply = await wait_until_answered(page, 1)
    assert await reply.get_attribute("data-status") == "completed"

    content = reply.locator(".content")
    text = await content_text(reply)
    assert "<img src=x onerror=alert(1)>" in text
    assert "<script>window.__pwned = true; alert(2)</script>" in text
    assert '<iframe src="https://example.com"></iframe>' in text
    assert await content.locator("img, script, iframe").count() == 0
    assert await page.evaluate("window.__pwned") is None
    # Markdown still works: emphasis, inline code, a list, a code block, and only the http(s) link.
    assert await content.locator("strong").inner_text() == "bold"
    assert await content.locator("em").inner_text() == "italic"
    assert await content.locator("p code").first.inner_text() == "<b>code</b>"
    assert await content.locator("li").count() == 3
    assert await content.locator("pre code").inner_text() == '<iframe src="https://example.com"></iframe>'
    links = content.locator("a")
    assert await links.count() == 1
    assert await links.get_attribute("href") == "https://example.com/docs"
    assert await links.get_attribute("rel") == "noopener noreferrer nofollow"
    turn = await stored_turn(http, person, session_id, page, 1)
    assert turn["output_text"] == "".join(HOSTILE)

    # The model's function call item (not one of Parley's tools) is shown as requested.
    weather = reply.locator(".tool-call[data-call-id='call_weather']")
    assert await weather.locator(".tool-name").inner_text() == "get_weather"
    assert await weather.locator(".tool-args").inner_text() == '{"city":"Lisbon"}'
    assert await weather.locator(".tool-state").inner_text() == "requested"


async def test_parleys_own_tool_calls_show_while_they_happen(
    page: Page, web: RunningParley, http: httpx.AsyncClient, person: ApiUser, sim: Simulator
) -> None:
    await sim.configure(**WATCHABLE)
    await open_playground(page, web.base_url, person.key)
    session_id = await new_chat(page)
    await send_message(page, "What is the current time in Lisbon?")
    # The call shows up while the answer is still being written, then the answer uses its output.
    await page.wait_for_function(
        """() => {
          const answer = document.querySelector('#thread .msg.assistant');
          return answer?.dataset.status === 'streaming' && answer.querySelector('.tool-call .tool-name');
        }"""
    )
    reply = await wait_until_answered(page, 1)
    assert await reply.get_attribute("data-status") == "completed"
    chip = reply.locator(".tool-call")
    assert await chip.count() == 1
    assert await chip.locator(".tool-name").inner_text() == "current_time"
    assert await chip.get_attribute("data-source") == "parley"
    assert await chip.get_attribute("data-phase") == "completed"
    assert (await chip.locator(".tool-state").inner_text()).startswith("done")
    turn = await stored_turn(http, person, session_id, page, 1)
    assert "The tool returned" in turn["output_text"]
    assert await content_text(reply) == await rendered(page, turn["output_text"])
    reasoning = await reply.locator(".reasoning-text").text_content()

    # After a reload the answer shows what it did, as it did live: the call and the reasoning summary.
    await page.reload()
    reply = await wait_until_answered(page, 1)
    chip = reply.locator(".tool-call")
    assert await chip.count() == 1
    assert await chip.locator(".tool-name").inner_text() == "current_time"
    assert await chip.get_attribute("data-source") == "parley"
    assert reasoning
    assert await reply.locator(".reasoning-text").text_content() == reasoning


# How far below the visible part of the thread the end of the last answer (its tokens and cost line) is.
LAST_LINE_HIDDEN_PX = """() => {
  const thread = document.getElementById('messages').getBoundingClientRect();
  const answers = document.querySelectorAll('#thread .msg.assistant');
  return answers[answers.length - 1].querySelector('.turn-meta').getBoundingClientRect().bottom - thread.bottom;
}"""


async def test_a_reader_at_the_bottom_sees_each_answer_to_its_last_line(
    page: Page, web: RunningParley, person: ApiUser, sim: Simulator
) -> None:
    """However fast an answer comes (the simulator at its instant pace: the whole answer within a frame), and
    with a tool call, a reasoning summary and the closing line added around its text, a reader who stays at the
    bottom of the thread sees each answer end there."""
    await open_playground(page, web.base_url, person.key)
    await new_chat(page)
    questions = ["How do I count error lines in a server log?", "What is the current time in Lisbon?"] * 2
    for number, question in enumerate(questions, start=1):
        await send_message(page, question)
        reply = await wait_until_answered(page, number)
        assert await reply.get_attribute("data-status") == "completed"
        await page.evaluate("() => new Promise((resolve) => requestAnimationFrame(() => setTimeout(resolve, 50)))")
        assert await page.evaluate(LAST_LINE_HIDDEN_PX) <= 0, number
    # The thread is taller than the window by then: the test is about scrolling.
    assert await page.evaluate("() => document.getElementById('messages').scrollTop") > 0


async def test_a_bad_key_is_explained(page: Page, web: RunningParley) -> None:
    await open_playground_without_waiting(page, web.base_url, "pk_not_a_real_key")
    banner = page.locator("#error")
    await banner.wait_for()
    assert "API key was not accepted" in await banner.inner_text()
    assert await page.locator("#key-dialog").is_visible()
    assert "API key was not accepted" in await page.locator("#key-error").inner_text()


async def open_playground_without_waiting(page: Page, base_url: str, key: str) -> None:
    await page.goto(f"{base_url}/")
    await page.fill("#key-input", key)
    await page.click("#key-save")


async def test_a_second_message_while_one_is_answered_elsewhere_is_explained(
    page: Page, web: RunningParley, http: httpx.AsyncClient, person: ApiUser, sim: Simulator
) -> None:
    await sim.configure(**LONG)
    await open_playground(page, web.base_url, person.key)
    session_id = await new_chat(page)
    # Another tab (here: the API) is being answered in the same session.
    async with open_stream(
        http, "POST", f"/v1/sessions/{session_id}/messages", json={"input": "from elsewhere"}, headers=person.headers
    ) as (stream, source):
        assert stream.status == 200
        turn_id = (await anext(source.aiter_sse())).json()["turn"]["id"]
    try:
        await send_message(page, "me too")
        banner = page.locator("#error")
        await banner.wait_for()
        assert "still answering your previous message" in await banner.inner_text()
        # The server did not take it (the page asks it before saying so).
        await page.locator(".msg.user.not-sent .not-sent-note").wait_for()
        assert await page.locator(".msg.user.not-sent .not-sent-note").inner_text() == "Not sent"
        assert await page.locator(".msg.user.not-sent").count() == 1
        assert await page.input_value("#input") == "me too"
        assert await page.locator(ASSISTANT).count() == 0
    finally:
        await http.post(f"/v1/sessions/{session_id}/turns/{turn_id}/cancel", headers=person.headers)


async def test_upstream_failures_are_explained(
    page: Page, web: RunningParley, http: httpx.AsyncClient, person: ApiUser, sim: Simulator
) -> None:
    await open_playground(page, web.base_url, person.key)
    await new_chat(page)

    # Before the first byte: the HTTP status carries it.
    await sim.faults({"kind": "http_error", "status": 500})
    await send_message(page, "first try")
    banner = page.locator("#error")
    await banner.wait_for()
    assert "The AI service had an internal problem" in await banner.inner_text()
    assert await banner.get_attribute("data-status") == "502"
    await page.click("#error-close")

    # The server stored that message, with its failed turn: the thread shows it so, as a reload would.
    first = await wait_until_answered(page, 1)
    assert await first.get_attribute("data-status") == "failed"

    # After it: the terminal event.
    await sim.faults({"kind": "error_event", "after_events": 6, "code": "server_error"})
    await page.fill("#input", "")
    await send_message(page, "second try")
    failed = await wait_until_answered(page, 2)
    assert await failed.get_attribute("data-status") == "failed"
    assert "internal problem" in await failed.locator(".turn-error").inner_text()


async def test_parley_js_answers_a_client_tool_and_the_turn_goes_on(
    page: Page, web: RunningParley, http: httpx.AsyncClient, person: ApiUser
) -> None:
    """The app's own function: the stream ends with turn.requires_action; submitToolOutputs streams the rest,
    its event ids continuing."""
    await open_playground(page, web.base_url, person.key)
    session_id = await new_chat(page)
    outcome = await page.evaluate(
        """async ([key, sessionId]) => {
          const {ParleyClient} = await import('/web/parley.js');
          const parley = new ParleyClient({apiKey: key});
          const tools = [{type: 'function', name: 'get_weather', description: 'Weather in a city',
                          parameters: {type: 'object', properties: {city: {type: 'string'}}, required: ['city']}}];
          const calls = [], ids = [];
          const first = parley.send(sessionId, {input: 'Use get_weather for Lisbon', tools},
                                    {onToolCall: (c) => calls.push([c.phase, c.source, c.name]), onEvent: (e) => ids.push(e.id)});
          const waiting = await first.done;
          const [call] = waiting.required_action.tool_calls;
          let text = '';
          const rest = parley.submitToolOutputs(sessionId, waiting.id, [{call_id: call.call_id, output: '{"temp_c": 21}'}],
                                                {onDelta: (d) => { text += d; }, onEvent: (e) => ids.push(e.id)},
                                                {lastEventId: first.lastEventId});
          const done = await rest.done;
          return {waiting: waiting.status, calls, ids, text, done};
        }""",
        [person.key, session_id],
    )
    assert outcome["waiting"] == "requires_action"
    assert outcome["calls"] == [["started", "function", "get_weather"], ["completed", "function", "get_weather"]]
    assert outcome["ids"] == list(range(1, len(outcome["ids"]) + 1))
    assert outcome["done"]["status"] == "completed"
    assert '{"temp_c": 21}' in outcome["done"]["output_text"]
    assert outcome["done"]["output_text"].endswith(outcome["text"])


LONG_TITLE = "Packing for Lisbon in May: layers, shoes for the cobbles, and where to find the best pastéis de nata"

# Where a row's title and its action buttons are drawn, and whether the title is cut short with an ellipsis.
ROW_GEOMETRY = """(row) => {
  const box = (node) => { const r = node.getBoundingClientRect(); return {left: r.left, right: r.right, width: r.width}; };
  const title = row.querySelector('.session-title');
  return {
    row: box(row),
    title: box(title),
    buttons: [...row.querySelectorAll('.session-actions button')].map(box),
    cut: title.scrollWidth > title.clientWidth && getComputedStyle(title).textOverflow === 'ellipsis',
  };
}"""


async def assert_actions_beside_title(row: Locator) -> None:
    geometry = await row.evaluate(ROW_GEOMETRY)
    assert geometry["cut"], geometry
    assert len(geometry["buttons"]) == 2
    for button in geometry["buttons"]:
        assert button["width"] > 0, geometry
        assert geometry["title"]["right"] <= button["left"], geometry
        assert button["right"] <= geometry["row"]["right"], geometry


async def test_a_long_title_is_cut_short_beside_its_actions_on_a_laptop_and_a_phone(
    browser: Browser, page: Page, web: RunningParley, http: httpx.AsyncClient, person: ApiUser
) -> None:
    created = await http.post("/v1/sessions", json={"title": LONG_TITLE}, headers=person.headers)
    session_id = created.json()["id"]
    await open_playground(page, web.base_url, person.key)
    row = page.locator(f"[data-session-id='{session_id}']")
    await row.hover()
    await assert_actions_beside_title(row)

    phone = await browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True)
    try:
        tab = await phone.new_page()
        problems = PageProblems(tab)
        await open_playground(tab, web.base_url, person.key)
        await tab.locator("#menu").tap()
        await tab.wait_for_function("() => document.getElementById('sidebar').getBoundingClientRect().left >= 0")
        # No hover on a phone: the actions are there all the time, beside the title.
        await assert_actions_beside_title(tab.locator(f"[data-session-id='{session_id}']"))
        assert problems.errors == []
    finally:
        await phone.close()


async def test_a_session_counts_its_exchanges(
    page: Page, web: RunningParley, http: httpx.AsyncClient, person: ApiUser, sim: Simulator
) -> None:
    await open_playground(page, web.base_url, person.key)
    session_id = await new_chat(page)
    for number, text in enumerate(["First question", "Second question"], start=1):
        await send_message(page, text)
        await wait_until_answered(page, number)
    row = page.locator(f"[data-session-id='{session_id}'] .session-sub")
    await page.wait_for_function(
        "(id) => document.querySelector(`[data-session-id='${id}'] .exchanges`)?.textContent === '2 exchanges'",
        arg=session_id,
    )
    assert (await row.inner_text()).startswith("2 exchanges · $")
    assert (await page.locator("#session-meta").inner_text()).startswith("2 exchanges · $")
    # Two exchanges are four messages: the count says which it counts.
    stored = (await http.get(f"/v1/sessions/{session_id}", headers=person.headers)).json()
    messages = (await http.get(f"/v1/sessions/{session_id}/messages", headers=person.headers)).json()["data"]
    assert stored["turn_count"] == 2
    assert len(messages) == 4
    assert "messages" not in await row.inner_text()


FORMAT_CASES = {
    "0.12345678": "$0.12",
    "0.01000000": "$0.01",
    "0.00999999": "$0.01",
    "12.50000000": "$12.50",
    "1234.5": "$1,234.50",
    "1.005": "$1.01",
    "0.00012340": "$0.0001234",
    "0.00012345678": "$0.0001235",
    "0.00000900": "$0.000009",
    "0": "$0.00",
}


def cost_shown(cost: str) -> str:
    """What the page should show for a stored cost: cents from $0.01 up, else 4 significant digits."""
    amount = Decimal(cost)
    if amount >= Decimal("0.01"):
        return f"${amount.quantize(Decimal('0.01')):,}"
    rounded = amount.quantize(Decimal(1).scaleb(amount.adjusted() - 3))
    return f"${rounded.normalize():f}"


async def test_costs_read_as_money_with_the_exact_figure_on_hover(
    page: Page, web: RunningParley, http: httpx.AsyncClient, person: ApiUser, sim: Simulator
) -> None:
    await open_playground(page, web.base_url, person.key)
    shown = await page.evaluate(
        """async (values) => {
          const {formatCost} = await import('/web/format.js');
          return Object.fromEntries([...values, null].map((value) => [String(value), formatCost(value)]));
        }""",
        list(FORMAT_CASES),
    )
    assert shown == {**FORMAT_CASES, "null": "cost unknown"}

    # A cheap answer (a fraction of a cent), a dear one (2,000 tokens of gpt-4.1) and an unpriced model's.
    for model, tokens, size in (
        ("gpt-4.1-nano", None, "tiny"),
        ("gpt-4.1", 2000, "cents"),
        ("my-own-fine-tune", None, "unknown"),
    ):
        await sim.configure(output_tokens=tokens)
        created = await http.post("/v1/sessions", json={"model": model}, headers=person.headers)
        session_id = created.json()["id"]
        await page.goto(f"{web.base_url}/#{session_id}")
        await page.wait_for_function("(id) => document.documentElement.dataset.loaded === id", arg=session_id)
        await send_message(page, "How much does this cost?")
        reply = await wait_until_answered(page, 1)
        cost = reply.locator(".turn-meta .cost")
        stored = (await stored_turn(http, person, session_id, page, 1))["cost_usd"]
        if size == "unknown":
            assert stored is None
            assert await cost.inner_text() == "cost unknown"
            assert "unknown" in (await cost.get_attribute("title") or "")
            continue
        assert (Decimal(stored) >= Decimal("0.01")) == (size == "cents"), stored
        assert len(stored.split(".")[1]) == 8
        assert await cost.inner_text() == cost_shown(stored)
        assert await cost.get_attribute("title") == f"${stored} exactly"


async def test_a_message_the_server_stored_is_never_shown_as_not_sent(
    page: Page, web: RunningParley, http: httpx.AsyncClient, person: ApiUser, sim: Simulator
) -> None:
    await open_playground(page, web.base_url, person.key)
    session_id = await new_chat(page)

    # The upstream fails before its first byte: Parley answers 502, having stored the message and a failed turn.
    await sim.faults({"kind": "http_error", "status": 500})
    await send_message(page, "first try")
    failed = await wait_until_answered(page, 1)
    assert await failed.get_attribute("data-status") == "failed"
    assert await failed.locator(".badge").inner_text() == "Failed"

    # A proxy on the way fails a stream the server answered in full.
    async def fail_after_the_server(route: Route) -> None:
        served = await route.fetch()
        assert served.status == 200
        await route.fulfill(status=502, content_type="text/html", body="<h1>Bad gateway</h1>")

    await page.route("**/messages", fail_after_the_server)
    await page.fill("#input", "")
    await send_message(page, "second try")
    answered = await wait_until_answered(page, 2)
    await page.unroute("**/messages")
    assert await answered.get_attribute("data-status") == "completed"
    stored = await stored_turn(http, person, session_id, page, 2)
    assert stored["input"] == "second try"
    assert stored["status"] == "completed"
    assert await content_text(answered)

    assert await page.locator(".msg.user.not-sent").count() == 0
    assert await page.locator(".not-sent-note").count() == 0
    before = await page.evaluate(THREAD_TEXT_WITHOUT_REASONING)
    await page.reload()
    await page.wait_for_selector("html[data-ready]")
    await wait_until_answered(page, 2)
    # The same messages and answers (a reload adds the reasoning summary that the failed stream did not bring).
    assert await page.evaluate(THREAD_TEXT_WITHOUT_REASONING) == before


THREAD_TEXT_WITHOUT_REASONING = """() => {
  const thread = document.getElementById('thread').cloneNode(true);
  thread.querySelectorAll('.reasoning').forEach((node) => node.remove());
  document.body.append(thread);
  const text = thread.innerText;
  thread.remove();
  return text;
}"""


CODE = "def greet(name):\n    return f'<b>Hello, {name}!</b>'"


async def test_a_code_block_has_a_copy_button(
    context: BrowserContext, page: Page, web: RunningParley, http: httpx.AsyncClient, person: ApiUser, sim: Simulator
) -> None:
    await context.grant_permissions(["clipboard-read", "clipboard-write"], origin=web.base_url)
    await sim.faults(
        {"kind": "replay", "sse": recorded_answer(["Here:\n\n", f"```python\n{CODE}\n```\n", "\nThat's it."])}
    )
    await open_playground(page, web.base_url, person.key)
    await new_chat(page)
    await send_message(page, "Write a greeting function")
    reply = await wait_until_answered(page, 1)

    button = reply.locator(".code-block .copy-code")
    assert await button.count() == 1
    label = "node => getComputedStyle(node, '::after').content"
    assert await button.evaluate(label) == '"Copy"'
    await button.click()
    await page.wait_for_function(
        "() => getComputedStyle(document.querySelector('.copy-code'), '::after').content === '\"Copied\"'"
    )
    assert await page.evaluate("navigator.clipboard.readText()") == CODE
    # The button's words are not part of the answer's text.
    assert "Cop" not in await content_text(reply)
    assert await reply.locator("pre code").inner_text() == CODE


REASONING = ["**Planning** the answer: the user wants <b>a packing list</b>.", "Then keep it short."]


async def test_a_reasoning_summary_shows_live_above_the_answer(
    page: Page, web: RunningParley, http: httpx.AsyncClient, person: ApiUser, sim: Simulator
) -> None:
    await page.add_init_script(HOLD_ANSWER_TEXT)
    await sim.faults(
        {
            "kind": "replay",
            "sse": recorded_answer(["Pack ", "light ", "layers."], before_text=reasoning_summary(REASONING)),
        }
    )
    await open_playground(page, web.base_url, person.key)
    await new_chat(page)
    await send_message(page, "What should I pack?")

    # Mid-stream, before any answer text: the summary is there, open, above the (empty) answer.
    reply = answer(page, 1)
    block = reply.locator("details.reasoning")
    await block.locator(".reasoning-part").nth(1).wait_for()
    assert await reply.get_attribute("data-status") == "streaming"
    assert await content_text(reply) == ""
    assert await block.evaluate("node => node.open")
    assert await block.locator("summary").inner_text() == "Reasoning"
    text = await block.locator(".reasoning-text").inner_text()
    assert "Planning the answer: the user wants <b>a packing list</b>." in text
    assert "Then keep it short." in text
    assert await block.locator("b").count() == 0
    assert await block.locator("strong").inner_text() == "Planning"

    await page.evaluate("window.releaseAnswer()")
    reply = await wait_until_answered(page, 1)
    assert await reply.get_attribute("data-status") == "completed"
    assert await content_text(reply) == "Pack light layers."
    # Once the answer has come, the summary folds away above it; a click opens it again.
    assert not await block.evaluate("node => node.open")
    assert not await block.locator(".reasoning-text").is_visible()
    folded = await block.bounding_box()
    content = await reply.locator(".content").bounding_box()
    assert folded is not None
    assert content is not None
    assert folded["y"] + folded["height"] <= content["y"]
    await block.locator("summary").click()
    assert await block.locator(".reasoning-text").is_visible()
    assert "Then keep it short." in await block.locator(".reasoning-text").inner_text()


async def test_thumbs_rate_an_answer_and_stay_after_a_reload(
    page: Page, web: RunningParley, http: httpx.AsyncClient, person: ApiUser
) -> None:
    await open_playground(page, web.base_url, person.key)
    session_id = await new_chat(page)
    await send_message(page, "Rate me")
    reply = await wait_until_answered(page, 1)
    turn_id = await reply.get_attribute("data-turn-id")
    up, down = reply.locator(".thumb-up"), reply.locator(".thumb-down")
    assert await up.get_attribute("aria-pressed") == "false"

    await up.click()
    await page.wait_for_function("(el) => el.getAttribute('aria-pressed') === 'true'", arg=await up.element_handle())
    stored = (await http.get(f"/v1/sessions/{session_id}/turns/{turn_id}", headers=person.headers)).json()
    assert stored["feedback"]["rating"] == "up"

    await down.click()
    await page.wait_for_function("(el) => el.getAttribute('aria-pressed') === 'true'", arg=await down.element_handle())
    assert await up.get_attribute("aria-pressed") == "false"
    stored = (await http.get(f"/v1/sessions/{session_id}/turns/{turn_id}", headers=person.headers)).json()
    assert stored["feedback"]["rating"] == "down"

    await page.reload()
    reply = await wait_until_answered(page, 1)
    assert await reply.locator(".thumb-down").get_attribute("aria-pressed") == "true"
    # Pressed again: the rating is taken back.
    await reply.locator(".thumb-down").click()
    await page.wait_for_function(
        "(el) => el.getAttribute('aria-pressed') === 'false'", arg=await reply.locator(".thumb-down").element_handle()
    )
    stored = (await http.get(f"/v1/sessions/{session_id}/turns/{turn_id}", headers=person.headers)).json()
    assert stored["feedback"] is None


async def test_search_finds_a_message_and_opens_its_session(
    page: Page, web: RunningParley, http: httpx.AsyncClient, person: ApiUser
) -> None:
    async def create(title: str, *contents: str) -> str:
        body = {"title": title, "messages": [{"role": "user", "content": c} for c in contents]}
        created = await http.post("/v1/sessions", json=body, headers=person.headers)
        assert created.status_code == 201, created.text
        return str(created.json()["id"])

    wanted = await create("Trip planning", "🎉 <b>Packing</b> for Lisbon in May?")
    await create("Groceries", "Buy apples and pears")
    await open_playground(page, web.base_url, person.key)

    await page.fill("#search-input", "lisbon")
    results = page.locator("#search-list .search-item")
    await results.first.wait_for()
    assert await results.count() == 1
    assert await page.locator("#session-list").is_hidden()
    result = results.first
    assert await result.get_attribute("data-session-id") == wanted
    # The matched word is marked where the API's UTF-16 offsets say, after an emoji; markup in a message is text.
    assert await result.locator("mark").all_inner_texts() == ["Lisbon"]
    assert await result.locator(".search-snippet").inner_text() == "🎉 <b>Packing</b> for Lisbon in May?"
    assert await result.locator(".session-title").inner_text() == "Trip planning"

    await result.locator(".search-open").click()
    await page.wait_for_selector(f"html[data-loaded='{wanted}']")
    assert await page.locator("#session-title").inner_text() == "Trip planning"
    assert await page.locator("#thread .msg.user .bubble").inner_text() == "🎉 <b>Packing</b> for Lisbon in May?"

    # Titles are found too; nothing found says so; an empty box brings the conversations back.
    await page.fill("#search-input", "groceries")
    await page.wait_for_function(
        "() => document.querySelector('#search-list .search-item mark')?.textContent === 'Groceries'"
    )
    await page.fill("#search-input", "nowhere")
    await page.wait_for_function(
        "() => document.querySelector('#search-status').textContent.startsWith('Nothing found')"
    )
    assert await results.count() == 0
    await page.press("#search-input", "Escape")
    await page.locator("#session-list").wait_for(state="visible")
    assert await page.locator("#search-results").is_hidden()
    assert await page.locator(".session-item").count() == 2


async def test_citations_show_as_links_live_and_after_a_reload(
    page: Page, web: RunningParley, person: ApiUser, sim: Simulator
) -> None:
    cited = {
        "type": "url_citation",
        "url": "https://example.com/lisbon",
        "title": "Lisbon in May",
        "start_index": 0,
        "end_index": 6,
    }
    unsafe = {**cited, "url": "javascript:alert(1)", "title": "Not a link"}
    await sim.faults({"kind": "replay", "sse": recorded_answer(["Lisbon ", "is warm."], annotations=[cited, unsafe])})
    await open_playground(page, web.base_url, person.key)
    await new_chat(page)
    await send_message(page, "Is Lisbon warm in May?")
    for _ in range(2):
        reply = await wait_until_answered(page, 1)
        links = reply.locator(".sources a")
        assert await links.count() == 1
        assert await links.inner_text() == "Lisbon in May"
        assert await links.get_attribute("href") == "https://example.com/lisbon"
        await page.reload()
