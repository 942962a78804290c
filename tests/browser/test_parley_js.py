"""parley.js and markdown.js on their own, in Chromium, with a scripted `fetch` instead of a server.

The modules are served from app/web by request interception at a made-up origin, so these tests need no
Parley and run once (not per database backend).
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from playwright.async_api import Browser, Page, Route

from app.api.routes.web import WEB_DIR

ORIGIN = "http://parley.test"

# Scripted responses for ParleyClient({fetch}): every call is logged; each step answers one call.
HARNESS = """
window.frames_ = (events) => events.map(([id, name, data]) =>
  `id: ${id}\\nevent: ${name}\\ndata: ${JSON.stringify(data)}\\n\\n`).join('');

// A streamed 200 whose body is `parts` (strings or Uint8Arrays), then a clean end or a network error.
window.streamed = (parts, {fail = false} = {}) => {
  const encoder = new TextEncoder();
  const queue = [...parts];
  return new Response(new ReadableStream({
    async pull(controller) {
      await new Promise((r) => setTimeout(r, 2));
      while (typeof queue[0] === 'function') await queue.shift()();  // e.g. wait for another call
      if (queue.length) {
        const part = queue.shift();
        controller.enqueue(typeof part === 'string' ? encoder.encode(part) : part);
      } else if (fail) controller.error(new TypeError('network error'));
      else controller.close();
    },
  }), {status: 200, headers: {'Content-Type': 'text/event-stream'}});
};

window.scripted = (steps) => {
  const calls = [];
  const fetch = async (url, init = {}) => {
    calls.push({url: String(url), method: init.method || 'GET', headers: {...(init.headers || {})},
                body: init.body === undefined ? null : init.body});
    const step = steps.shift();
    if (!step) throw new Error('unexpected fetch ' + url);
    return step(url, init);
  };
  return {fetch, calls};
};

window.turnOf = (status, text = '') => ({id: 'turn_1', object: 'turn', session_id: 'sess_1', status,
  output_text: text, usage: null, cost_usd: null, error: null});

window.collect = (stream) => {
  const log = {events: [], deltas: [], tools: [], reconnects: [], done: null, errors: []};
  return [log, {
    onEvent: (e) => log.events.push([e.id, e.name]),
    onDelta: (d) => log.deltas.push(d),
    onToolCall: (call) => log.tools.push(call),
    onReconnect: (info) => log.reconnects.push(info.attempt),
    onDone: (turn) => { log.done = turn; },
    onError: (error) => log.errors.push({status: error.status, code: error.code, retryAfter: error.retryAfter,
                                          message: error.message}),
  }];
};
"""


@pytest.fixture(scope="module")
async def lab(browser: Browser) -> AsyncIterator[Page]:
    """A blank page at a made-up origin whose /web/* are the playground's files; shared by the module (each
    test builds its own client and scripted fetch)."""
    context = await browser.new_context()

    async def serve(route: Route) -> None:
        path = route.request.url.removeprefix(ORIGIN)
        if path.startswith("/web/"):
            file = WEB_DIR / path.removeprefix("/web/")
            await route.fulfill(status=200, body=file.read_bytes(), content_type="text/javascript")
        else:
            await route.fulfill(status=200, body="<!doctype html><title>lab</title>", content_type="text/html")

    await context.route(f"{ORIGIN}/**", serve)
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    await page.goto(f"{ORIGIN}/")
    await page.add_script_tag(content=HARNESS)
    yield page
    await context.close()
    assert errors == []


async def run(page: Page, body: str, arg: Any = None) -> Any:
    """Runs `body` (an async function body that may use parley.js as `P` and markdown.js as `M`)."""
    script = f"""async (arg) => {{
        const P = await import('/web/parley.js');
        const M = await import('/web/markdown.js');
        {body}
    }}"""
    return await page.evaluate(script, arg)


FRAMING = (
    '\ufeffretry: 1500\nid: 1\nevent: a\ndata: {"x":1}\n\n'
    ": ping\n\n"
    "id: 2\r\nevent: b\r\ndata: line one\r\ndata: line two\r\n\r\n"
    "id: 3\revent: c\rdata:no-space\r\r"
    "data\n\n"
    "event: dropped-without-data\n\n"
    "id: 4\nevent: d\ndata: tail\n\n"
    "id: 5\nevent: e\ndata: never finished"
)


async def test_the_sse_parser_follows_the_framing_however_the_bytes_are_split(lab: Page) -> None:
    results = await run(
        lab,
        """
        const out = {};
        for (const size of [1, 2, 3, 7, arg.length]) {
          const events = [], comments = [];
          const parser = new P.SSEParser((m) => events.push(m), (c) => comments.push(c));
          for (let i = 0; i < arg.length; i += size) parser.push(arg.slice(i, i + size));
          out[size] = {events, comments};
        }
        return out;
        """,
        FRAMING,
    )
    expected = [
        {"id": "1", "event": "a", "data": '{"x":1}', "retry": 1500},
        {"id": "2", "event": "b", "data": "line one\nline two", "retry": None},
        {"id": "3", "event": "c", "data": "no-space", "retry": None},
        {"id": "3", "event": "message", "data": "", "retry": None},
        {"id": "4", "event": "d", "data": "tail", "retry": None},
    ]
    assert len(results) == 5
    for result in results.values():
        assert result["events"] == expected
        assert result["comments"] == ["ping"]


async def test_send_resumes_from_the_last_event_id_after_the_connection_drops(lab: Page) -> None:
    log = await run(
        lab,
        """
        const coffee = new TextEncoder().encode(frames_([[6, 'response.output_text.delta', {delta: 'ld ☕'}]]));
        const cut = coffee.length - 6;  // inside the UTF-8 bytes of ☕
        const {fetch, calls} = scripted([
          () => streamed(['retry: 3000\\n', frames_([
            [1, 'turn.created', {turn: turnOf('in_progress')}],
            [2, 'response.created', {response: {id: 'resp_1'}}],
            [3, 'response.output_text.delta', {delta: 'Hel'}],
          ]), frames_([[4, 'response.output_text.delta', {delta: 'lo, '}]])], {fail: true}),
          () => { throw new TypeError('Failed to fetch'); },
          () => streamed([frames_([
            [4, 'response.output_text.delta', {delta: 'lo, '}],
            [5, 'response.output_text.delta', {delta: 'wor'}],
          ]), coffee.slice(0, cut), coffee.slice(cut), frames_([
            [7, 'turn.completed', {turn: turnOf('completed', 'Hello, world ☕')}],
          ])]),
        ]);
        const client = new P.ParleyClient({apiKey: 'pk_test', fetch, initialBackoffMs: 1});
        const [log, callbacks] = collect();
        const stream = client.send('sess_1', 'hi', callbacks);
        log.final = await stream.done;
        log.text = stream.text;
        log.calls = calls;
        return log;
        """,
    )
    assert log["deltas"] == ["Hel", "lo, ", "wor", "ld ☕"]
    assert log["text"] == "Hello, world ☕" == log["final"]["output_text"]
    assert [event[0] for event in log["events"]] == [1, 2, 3, 4, 5, 6, 7]
    assert log["reconnects"] == [1, 2]
    assert log["done"]["status"] == "completed"
    assert log["errors"] == []

    post, *resumes = log["calls"]
    assert post["method"] == "POST"
    assert post["url"] == "/v1/sessions/sess_1/messages"
    assert post["headers"]["Authorization"] == "Bearer pk_test"
    assert post["headers"]["Content-Type"] == "application/json"
    assert re.fullmatch(
        r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", post["headers"]["Idempotency-Key"]
    )
    assert post["body"] == '{"input":"hi","stream":true}'
    assert len(resumes) == 2
    for resume in resumes:
        assert resume["method"] == "GET"
        assert resume["url"] == "/v1/sessions/sess_1/turns/turn_1/events"
        assert resume["headers"]["Last-Event-ID"] == "4"
        assert resume["headers"]["Authorization"] == "Bearer pk_test"


async def test_a_send_that_never_reached_the_server_is_repeated_with_the_same_idempotency_key(lab: Page) -> None:
    log = await run(
        lab,
        """
        const {fetch, calls} = scripted([
          () => { throw new TypeError('Failed to fetch'); },
          () => streamed([frames_([
            [1, 'turn.created', {turn: turnOf('in_progress')}],
            [2, 'response.output_text.delta', {delta: 'once'}],
            [3, 'turn.completed', {turn: turnOf('completed', 'once')}],
          ])]),
        ]);
        const client = new P.ParleyClient({apiKey: 'k', fetch, initialBackoffMs: 1});
        const [log, callbacks] = collect();
        await client.send('sess_1', {input: 'hi', metadata: {a: 'b'}}, callbacks).done;
        log.calls = calls;
        return log;
        """,
    )
    first, second = log["calls"]
    assert first["method"] == second["method"] == "POST"
    assert first["headers"]["Idempotency-Key"] == second["headers"]["Idempotency-Key"]
    assert first["body"] == second["body"]
    assert log["deltas"] == ["once"]


async def test_tool_calls_arrive_as_typed_callbacks_and_cancel_waits_for_the_turn_id(lab: Page) -> None:
    log = await run(
        lab,
        """
        let cancelled;
        const cancelSeen = new Promise((resolve) => { cancelled = resolve; });
        const call = {id: 'fc_1', type: 'function_call', call_id: 'call_1', name: 'get_weather', arguments: ''};
        const {fetch, calls} = scripted([
          () => streamed([
            frames_([
              [1, 'turn.created', {turn: turnOf('in_progress')}],
              [2, 'turn.tool_call.started', {call_id: 'call_0', name: 'search', arguments: '{}'}],
              [3, 'turn.tool_call.completed', {call_id: 'call_0', name: 'search', output: 'ok', error: null, duration_ms: 9}],
              [4, 'response.output_item.added', {item: call}],
              [5, 'response.output_item.done', {item: {...call, arguments: '{"city":"Lisbon"}'}}],
            ]),
            () => cancelSeen,
            frames_([[6, 'turn.cancelled', {turn: turnOf('cancelled')}]]),
          ]),
          () => { cancelled(); return new Response(JSON.stringify(turnOf('cancelled')), {status: 200}); },
        ]);
        const client = new P.ParleyClient({apiKey: 'k', fetch});
        const [log, callbacks] = collect();
        const stream = client.send('sess_1', 'hi', callbacks);
        stream.cancel();  // before turn.created: sent as soon as the turn's id is known
        await stream.done;
        log.calls = calls.map((c) => [c.method, c.url]);
        return log;
        """,
    )
    assert log["tools"] == [
        {"call_id": "call_0", "name": "search", "arguments": "{}", "phase": "started", "source": "parley"},
        {
            "call_id": "call_0",
            "name": "search",
            "output": "ok",
            "error": None,
            "duration_ms": 9,
            "phase": "completed",
            "source": "parley",
        },
        {"phase": "started", "source": "function", "call_id": "call_1", "name": "get_weather", "arguments": ""},
        {
            "phase": "completed",
            "source": "function",
            "call_id": "call_1",
            "name": "get_weather",
            "arguments": '{"city":"Lisbon"}',
        },
    ]
    assert log["calls"] == [
        ["POST", "/v1/sessions/sess_1/messages"],
        ["POST", "/v1/sessions/sess_1/turns/turn_1/cancel"],
    ]
    assert log["done"]["status"] == "cancelled"


ERRORS = [
    (401, "authentication_error", "invalid_credentials", {}, "API key was not accepted"),
    (402, "budget_error", "budget_exceeded", {}, "used up this month's budget"),
    (409, "conflict_error", "turn_in_progress", {}, "still answering your previous message"),
    (429, "rate_limit_error", "rate_limited", {"Retry-After": "7"}, "Try again in 7 seconds"),
    (502, "upstream_error", "upstream_error", {}, "returned an error instead of an answer"),
    (504, "upstream_error", "upstream_timeout", {}, "took too long to answer"),
]


@pytest.mark.parametrize(("status", "kind", "code", "headers", "words"), ERRORS)
async def test_http_errors_reach_on_error_typed_and_in_words(
    lab: Page, status: int, kind: str, code: str, headers: dict[str, str], words: str
) -> None:
    result = await run(
        lab,
        """
        const [status, type, code, headers] = arg;
        const body = JSON.stringify({error: {type, code, message: 'raw message', param: null}});
        const {fetch, calls} = scripted([() => new Response(body, {status, headers})]);
        const client = new P.ParleyClient({apiKey: 'k', fetch, initialBackoffMs: 1});
        const [log, callbacks] = collect();
        const stream = client.send('sess_1', 'hi', callbacks);
        try { await stream.done; } catch (error) { log.rejected = error instanceof P.ParleyError; }
        log.words = P.describeError(log.errors[0]);
        log.calls = calls.length;
        return log;
        """,
        [status, kind, code, headers],
    )
    assert result["rejected"] is True
    assert result["calls"] == 1  # an answered POST is never repeated
    [error] = result["errors"]
    assert error["status"] == status
    assert error["code"] == code
    assert error["retryAfter"] == (7 if status == 429 else None)
    assert words in result["words"]


async def test_a_resume_gives_up_after_max_reconnects_and_says_the_network_is_down(lab: Page) -> None:
    log = await run(
        lab,
        """
        const fail = () => { throw new TypeError('Failed to fetch'); };
        const {fetch, calls} = scripted([
          () => streamed([frames_([[1, 'turn.created', {turn: turnOf('in_progress')}]])], {fail: true}),
          fail, fail,
        ]);
        const client = new P.ParleyClient({apiKey: 'k', fetch, initialBackoffMs: 1, maxReconnects: 2});
        const [log, callbacks] = collect();
        await client.send('sess_1', 'hi', callbacks).done.catch(() => {});
        log.words = P.describeError(log.errors[0]);
        log.calls = calls.length;
        return log;
        """,
    )
    assert log["calls"] == 3
    assert log["errors"][0]["status"] == 0
    assert "Can't reach the server" in log["words"]


async def test_branch_export_and_config_calls(lab: Page) -> None:
    log = await run(
        lab,
        """
        const json = (body, status = 200, headers = {}) =>
          new Response(JSON.stringify(body), {status, headers: {'Content-Type': 'application/json', ...headers}});
        const done = (id) => () => streamed([frames_([
          [1, 'turn.created', {turn: {...turnOf('in_progress'), id}}],
          [2, 'response.output_text.delta', {delta: id}],
          [3, 'turn.completed', {turn: {...turnOf('completed', id), id}}],
        ])]);
        const list = {object: 'list', data: [{id: 'msg_1'}], first_id: 'msg_1', last_id: 'msg_1', has_more: false};
        const {fetch, calls} = scripted([
          done('turn_edit'),
          done('turn_again'),
          () => json(list),
          () => json({id: 'sess_2', object: 'session'}, 201),
          () => new Response('# Trip\\n', {status: 200, headers: {'Content-Type': 'text/markdown; charset=utf-8',
            'Content-Disposition': 'attachment; filename="trip-planning.md"'}}),
          () => new Response('{}', {status: 200, headers: {'Content-Type': 'application/json'}}),
          () => json({object: 'config', models: {default: 'gpt-5-mini', allowed: ['*']}}),
          () => json({error: {type: 'conflict_error', code: 'turn_in_progress', message: 'busy', param: null}}, 409),
        ]);
        const client = new P.ParleyClient({apiKey: 'pk_test', fetch});
        const out = {};
        const [editLog, editCallbacks] = collect();
        out.edited = (await client.editMessage('sess_1', 'msg_1', {input: 'again', model: 'gpt-4.1-mini'},
          editCallbacks).done).id;
        out.editDeltas = editLog.deltas;
        out.regenerated = (await client.regenerate('sess_1', 'turn_1', {options: {temperature: 0.2}}).done).id;
        out.activated = await client.activate('sess_1', 'msg_1', {limit: 100});
        out.forked = await client.fork('sess_1', {message_id: 'msg_1'});
        const markdown = await client.exportSession('sess_1', {format: 'markdown', branches: 'all'});
        out.markdown = {filename: markdown.filename, type: markdown.contentType, text: await markdown.blob.text()};
        out.unnamed = (await client.exportSession('sess_1')).filename;
        out.config = await client.config();
        try { await client.activate('sess_1', 'msg_2'); } catch (error) {
          out.refused = {status: error.status, code: error.code, words: P.describeError(error)};
        }
        out.calls = calls.map((c) => ({url: c.url, method: c.method, body: c.body, auth: c.headers.Authorization,
          key: c.headers['Idempotency-Key'] ?? null, accept: c.headers.Accept ?? null}));
        return out;
        """,
    )
    assert log["edited"] == "turn_edit"
    assert log["editDeltas"] == ["turn_edit"]
    assert log["regenerated"] == "turn_again"
    assert log["activated"]["data"] == [{"id": "msg_1"}]
    assert log["forked"] == {"id": "sess_2", "object": "session"}
    assert log["markdown"] == {
        "filename": "trip-planning.md",
        "type": "text/markdown; charset=utf-8",
        "text": "# Trip\n",
    }
    assert log["unnamed"] == "sess_1.json"
    assert log["config"]["models"]["default"] == "gpt-5-mini"
    assert log["refused"]["status"] == 409
    assert log["refused"]["code"] == "turn_in_progress"
    assert "still answering" in log["refused"]["words"]

    calls = log["calls"]
    assert all(call["auth"] == "Bearer pk_test" for call in calls)
    edit, again, activate, fork, export, unnamed, config, refused = calls
    assert (edit["method"], edit["url"]) == ("POST", "/v1/sessions/sess_1/messages/msg_1/edit")
    assert edit["body"] == '{"input":"again","model":"gpt-4.1-mini","stream":true}'
    assert edit["accept"] == "text/event-stream"
    assert (again["method"], again["url"]) == ("POST", "/v1/sessions/sess_1/turns/turn_1/regenerate")
    assert again["body"] == '{"options":{"temperature":0.2},"stream":true}'
    # Each turn-starting call has an Idempotency-Key of its own, so a retried POST never starts a second turn.
    assert edit["key"]
    assert again["key"]
    assert edit["key"] != again["key"]
    assert (activate["method"], activate["url"]) == ("POST", "/v1/sessions/sess_1/messages/msg_1/activate?limit=100")
    assert activate["body"] is None
    assert (fork["method"], fork["url"], fork["body"]) == ("POST", "/v1/sessions/sess_1/fork", '{"message_id":"msg_1"}')
    assert (export["method"], export["url"]) == ("GET", "/v1/sessions/sess_1/export?format=markdown&branches=all")
    assert unnamed["url"] == "/v1/sessions/sess_1/export"
    assert (config["method"], config["url"]) == ("GET", "/v1/config")
    assert refused["url"] == "/v1/sessions/sess_1/messages/msg_2/activate"


MARKDOWN_CASES = [
    (
        "Hello **bold** and *it* and `x < y`",
        "<p>Hello <strong>bold</strong> and <em>it</em> and <code>x &lt; y</code></p>",
    ),
    ("<script>alert(1)</script>", "<p>&lt;script&gt;alert(1)&lt;/script&gt;</p>"),
    ("<img src=x onerror=alert(1)>", "<p>&lt;img src=x onerror=alert(1)&gt;</p>"),
    (
        "[ok](https://example.com/a?b=1) [no](javascript:alert(1)) [data](data:text/html,x)",
        '<p><a href="https://example.com/a?b=1" target="_blank" rel="noopener noreferrer nofollow">ok</a>'
        " [no](javascript:alert(1)) [data](data:text/html,x)</p>",
    ),
    (
        "see https://example.com/x.",
        '<p>see <a href="https://example.com/x" target="_blank" rel="noopener noreferrer nofollow">https://example.com/x</a>.</p>',
    ),
    (
        "- one\n- **two**\n\n1. first\n2. second",
        "<ul><li>one</li><li><strong>two</strong></li></ul><ol><li>first</li><li>second</li></ol>",
    ),
    (
        "```js\nconst a = '<b>';\n```\nafter",
        "<pre><code data-lang=\"js\">const a = '&lt;b&gt;';</code></pre><p>after</p>",
    ),
    ("```\nstill streaming <i>", "<pre><code>still streaming &lt;i&gt;</code></pre>"),
    (
        "line one\nline two\n\n# Title\n> quoted",
        "<p>line one<br>line two</p><h3>Title</h3><blockquote><p>quoted</p></blockquote>",
    ),
    # Backslash escapes show the character itself, outside code spans only.
    (
        r"snake\_case, 2\*3\*4, \<b\> and `a\_b`",
        "<p>snake_case, 2*3*4, &lt;b&gt; and <code>a\\_b</code></p>",
    ),
    # A pipe table (cells rendered inline, an escaped pipe inside one, alignment, a short row padded); the
    # paragraph before it ends where the header row begins.
    (
        "Compare:\n| Option | Good **at** |\n| :--- | ---: |\n| `a\\|b` | speed |\n| <i>x</i> |\n\nAfter.",
        '<p>Compare:</p><div class="table-wrap"><table><thead><tr><th data-align="left">Option</th>'
        '<th data-align="right">Good <strong>at</strong></th></tr></thead><tbody><tr>'
        '<td data-align="left"><code>a|b</code></td><td data-align="right">speed</td></tr><tr>'
        '<td data-align="left">&lt;i&gt;x&lt;/i&gt;</td><td data-align="right"></td></tr></tbody></table></div>'
        "<p>After.</p>",
    ),
    # Mid-stream: until the delimiter row is whole, the header row is text; a row of dashes alone is a rule.
    ("| Option | Good at |\n| --- |", "<p>| Option | Good at |<br>| --- |</p>"),
    ("| Option |\n| --- |", '<div class="table-wrap"><table><thead><tr><th>Option</th></tr></thead></table></div>'),
    ("---", "<hr>"),
]


@pytest.mark.parametrize(("source", "html"), MARKDOWN_CASES)
async def test_markdown_builds_safe_dom(lab: Page, source: str, html: str) -> None:
    rendered = await run(
        lab,
        "const box = document.createElement('div'); box.append(M.renderMarkdown(arg)); return box.innerHTML;",
        source,
    )
    assert rendered == html


async def test_upload_file_reports_progress_and_a_message_names_its_files(lab: Page) -> None:
    uploads: list[dict[str, Any]] = []

    async def files_route(route: Route) -> None:
        request = route.request
        body = request.post_data_buffer or b""
        uploads.append({"auth": request.headers.get("authorization"), "type": request.headers.get("content-type")})
        if b"forbidden.exe" in body:
            error = {"type": "invalid_request_error", "code": "unsupported_file_type", "message": "Not a type I take."}
            await route.fulfill(status=415, json={"error": {**error, "param": "file"}})
            return
        uploads[-1]["has_name"] = b'filename="notes.txt"' in body
        created = {"id": "pfile_1", "object": "file", "filename": "notes.txt", "bytes": 300_000}
        await route.fulfill(
            status=201, json={**created, "content_type": "text/plain", "created_at": "2026-01-01T00:00:00Z"}
        )

    await lab.route(f"{ORIGIN}/v1/files", files_route)
    try:
        log = await run(
            lab,
            """
            const client0 = new P.ParleyClient({apiKey: 'pk_test'});
            const progress = [];
            const file = new File([new Uint8Array(300000).fill(65)], 'notes.txt', {type: 'text/plain'});
            const uploaded = await client0.uploadFile(file, {onProgress: (p) => progress.push([p.loaded, p.total])});
            let refused = null;
            try { await client0.uploadFile(new Blob(['MZ']), {filename: 'forbidden.exe'}); } catch (error) {
              refused = {status: error.status, code: error.code, words: P.describeError(error)};
            }
            const cancelled = new AbortController();
            cancelled.abort();
            const aborted = await client0.uploadFile(file, {signal: cancelled.signal}).catch((e) => e.code);

            const {fetch, calls} = scripted([
              () => new Response(new Uint8Array([137, 80, 78, 71]), {status: 200, headers: {'Content-Type': 'image/png'}}),
              () => streamed([frames_([[1, 'turn.created', {turn: turnOf('in_progress')}],
                                       [2, 'turn.completed', {turn: turnOf('completed', 'ok')}]])]),
            ]);
            // A scripted XMLHttpRequest: the upload goes in three steps (what a slow network shows).
            class SlowXHR extends EventTarget {
              constructor() { super(); this.upload = new EventTarget(); this.headers = {}; }
              open(method, url) { this.target = [method, url]; }
              setRequestHeader(name, value) { this.headers[name] = value; }
              getResponseHeader(name) { return name === 'Content-Type' ? 'application/json' : null; }
              async send(form) {
                window.sentForm = {target: this.target, headers: this.headers, name: form.get('file').name};
                for (const loaded of [100, 200, 300]) {
                  await new Promise((r) => setTimeout(r, 5));
                  this.upload.dispatchEvent(Object.assign(new Event('progress'),
                    {loaded, total: 300, lengthComputable: true}));
                }
                this.status = 201;
                this.responseText = JSON.stringify({id: 'pfile_3', object: 'file', filename: 'x.png'});
                this.dispatchEvent(new Event('load'));
              }
            }
            const client = new P.ParleyClient({apiKey: 'pk_test', fetch, XMLHttpRequest: SlowXHR});
            const steps = [];
            const slow = await client.uploadFile(new Blob(['x']), {filename: 'x.png',
              onProgress: (p) => steps.push([p.loaded, p.total])});
            const blob = await client.fetchFileBlob('pfile_2');
            const files = [{id: 'pfile_2', content_type: 'image/png'}, {id: 'pfile_1', content_type: 'text/plain'}];
            await client.send('sess_1', {input: P.messageInput('Look', files)}).done;
            const stored = P.messageFiles([
              {type: 'message', role: 'user', content: [{type: 'input_text', text: 'Look'},
                {type: 'input_image', file_id: 'pfile_2', filename: 'a.png', content_type: 'image/png', bytes: 4}]},
              {type: 'input_file', file_id: 'pfile_1', filename: 'notes.txt', content_type: 'text/plain', bytes: 9},
              {type: 'input_image', image_url: 'https://example.com/x.png'},
            ]);
            return {uploaded, progress, refused, slow: slow.id, steps, sentForm: window.sentForm, aborted, blob: {size: blob.size, type: blob.type},
                    url: client.fileContentUrl('pfile_2'),
                    calls: calls.map((c) => ({url: c.url, auth: c.headers.Authorization, body: c.body})),
                    stored: stored.map((part) => part.filename)};
            """,
        )
    finally:
        await lab.unroute(f"{ORIGIN}/v1/files", files_route)
    assert log["uploaded"]["id"] == "pfile_1"
    # The real upload ends at 100% (whatever the browser reported on the way); the scripted one, step by step.
    assert log["progress"][-1][0] == log["progress"][-1][1] >= 300_000
    assert log["slow"] == "pfile_3"
    assert log["steps"] == [[100, 300], [200, 300], [300, 300]]
    assert log["sentForm"] == {
        "target": ["POST", "/v1/files"],
        "headers": {"Authorization": "Bearer pk_test", "Accept": "application/json"},
        "name": "x.png",
    }
    assert uploads[0] == {"auth": "Bearer pk_test", "type": uploads[0]["type"], "has_name": True}
    assert uploads[0]["type"].startswith("multipart/form-data; boundary=")
    assert log["refused"]["status"] == 415
    assert log["refused"]["code"] == "unsupported_file_type"
    assert "Not a type I take." in log["refused"]["words"]
    assert log["aborted"] == "upload_cancelled"
    assert len(uploads) == 2  # the cancelled upload never left
    assert log["blob"] == {"size": 4, "type": "image/png"}
    assert log["url"] == "/v1/files/pfile_2/content"
    blob_call, send_call = log["calls"]
    assert blob_call == {"url": "/v1/files/pfile_2/content", "auth": "Bearer pk_test", "body": None}
    assert json.loads(send_call["body"])["input"] == [
        {
            "role": "user",
            "content": [
                {"type": "input_text", "text": "Look"},
                {"type": "input_image", "file_id": "pfile_2"},
                {"type": "input_file", "file_id": "pfile_1"},
            ],
        }
    ]
    assert log["stored"] == ["a.png", "notes.txt"]
