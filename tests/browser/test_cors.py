"""CORS from a second origin, in real Chromium: a page served from another loopback port calls Parley.

SQLite only: this is about HTTP headers and what the browser does with them, not about storage.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from playwright.async_api import Page
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

from tests.conftest import ApiUser, RunningParley, create_api_user, run_parley
from tests.databases import sqlite_database
from tests.servers import free_port, serve

FRONTEND_PAGE = "<!doctype html><title>Another app</title><h1>A frontend on another origin</h1>"


async def frontend_page(request: Request) -> HTMLResponse:
    return HTMLResponse(FRONTEND_PAGE)


@dataclass(frozen=True)
class Origins:
    with_cors: RunningParley  # PARLEY_CORS_ORIGINS lists `allowed`
    without_cors: RunningParley  # the default: CORS off
    allowed: str  # the origin of a frontend Parley lets in
    unlisted: str  # the origin of one it does not


@pytest.fixture(scope="module")
async def origins(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Origins]:
    allowed_port, unlisted_port = free_port(), free_port()
    allowed = f"http://127.0.0.1:{allowed_port}"
    frontend = Starlette(routes=[Route("/", frontend_page)])
    async with (
        sqlite_database(tmp_path_factory.mktemp("cors")) as first_url,
        sqlite_database(tmp_path_factory.mktemp("no-cors")) as second_url,
    ):
        with (
            run_parley(first_url, "sqlite", cors_origins=[allowed]) as with_cors,
            run_parley(second_url, "sqlite") as without_cors,
            serve(frontend, port=allowed_port, lifespan="off"),
            serve(frontend, port=unlisted_port, lifespan="off") as unlisted,
        ):
            yield Origins(with_cors=with_cors, without_cors=without_cors, allowed=allowed, unlisted=unlisted)


async def user_and_session(parley: RunningParley) -> tuple[ApiUser, str]:
    async with httpx.AsyncClient(base_url=parley.base_url, timeout=30) as http:
        user = await create_api_user(http)
        created = await http.post("/v1/sessions", json={"title": "cors"}, headers=user.headers)
        assert created.status_code == 201, created.text
        return user, str(created.json()["id"])


# POST with Authorization, Content-Type: application/json and Idempotency-Key: a request that needs a
# preflight. Reads the whole SSE body; returns what a frontend could see, or how the browser refused.
FETCH_STREAM = """
async ([base, key, sessionId]) => {
  try {
    const response = await fetch(`${base}/v1/sessions/${sessionId}/messages`, {
      method: 'POST',
      headers: {'Authorization': `Bearer ${key}`, 'Content-Type': 'application/json',
                'Idempotency-Key': crypto.randomUUID()},
      body: JSON.stringify({input: 'hello from another origin'}),
    });
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let text = '', chunks = 0;
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      chunks += 1;
      text += decoder.decode(value, {stream: true});
    }
    return {status: response.status, type: response.headers.get('content-type'),
            requestId: response.headers.get('x-request-id'), chunks, text};
  } catch (error) {
    return {blocked: `${error.name}: ${error.message}`};
  }
}
"""

FETCH_LIST = """
async ([base, key]) => {
  try {
    const response = await fetch(`${base}/v1/sessions`, {headers: {'Authorization': `Bearer ${key}`}});
    return {status: response.status};
  } catch (error) {
    return {blocked: `${error.name}: ${error.message}`};
  }
}
"""

EVENT_SOURCE = """
(url) => new Promise((resolve) => {
  const source = new EventSource(url);
  const names = [];
  for (const name of ['turn.created', 'response.output_text.delta', 'turn.completed']) {
    source.addEventListener(name, () => {
      names.push(name);
      if (name === 'turn.completed') { source.close(); resolve(names); }
    });
  }
  source.onerror = () => { if (source.readyState === EventSource.CLOSED) resolve(['error', ...names]); };
  setTimeout(() => { source.close(); resolve(['timeout', ...names]); }, 15000);
})
"""


def sse_events(text: str) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line and not line.startswith(":"))
        if "event" in fields:
            events.append((fields["event"], json.loads(fields["data"])))
    return events


async def test_an_allowed_origin_sends_and_streams_with_fetch_and_event_source(page: Page, origins: Origins) -> None:
    parley = origins.with_cors
    user, session_id = await user_and_session(parley)
    await page.goto(f"{origins.allowed}/")

    result = await page.evaluate(FETCH_STREAM, [parley.base_url, user.key, session_id])
    assert "blocked" not in result, result
    assert result["status"] == 200
    assert result["type"].startswith("text/event-stream")
    assert result["requestId"], "X-Request-ID should be readable (exposed) from another origin"
    events = sse_events(result["text"])
    assert events[0][0] == "turn.created"
    assert events[-1][0] == "turn.completed"
    text = "".join(data["delta"] for name, data in events if name == "response.output_text.delta")
    assert text == events[-1][1]["turn"]["output_text"]

    # The turn's stream_url works for a plain EventSource from that origin too.
    stream_url = events[0][1]["turn"]["stream_url"]
    names = await page.evaluate(EVENT_SOURCE, stream_url)
    assert names[0] == "turn.created"
    assert names[-1] == "turn.completed"


async def test_an_allowed_origin_can_import_parley_js_from_parley_and_chat(page: Page, origins: Origins) -> None:
    parley = origins.with_cors
    async with httpx.AsyncClient(base_url=parley.base_url, timeout=30) as http:
        user = await create_api_user(http)
    await page.goto(f"{origins.allowed}/")
    outcome = await page.evaluate(
        """async ([base, key]) => {
          const {ParleyClient} = await import(`${base}/web/parley.js`);
          const parley = new ParleyClient({baseUrl: base, apiKey: key});
          const session = await parley.createSession({title: 'from another app'});
          let text = '';
          const turn = await parley.send(session.id, 'hi there', {onDelta: (d) => { text += d; }}).done;
          return {text, turn, sessions: (await parley.listSessions()).data.map((s) => s.title)};
        }""",
        [parley.base_url, user.key],
    )
    assert outcome["turn"]["status"] == "completed"
    assert outcome["text"] == outcome["turn"]["output_text"]
    assert outcome["sessions"] == ["from another app"]


async def test_the_preflight_allows_the_headers_a_frontend_sends(origins: Origins) -> None:
    async with httpx.AsyncClient(base_url=origins.with_cors.base_url) as http:
        preflight = await http.options(
            "/v1/sessions/sess_x/messages",
            headers={
                "Origin": origins.allowed,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,content-type,idempotency-key",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == origins.allowed
        allowed_headers = preflight.headers["access-control-allow-headers"].lower()
        for header in ("authorization", "content-type", "idempotency-key", "last-event-id"):
            assert header in allowed_headers
        assert "access-control-allow-credentials" not in preflight.headers

        refused = await http.options(
            "/v1/sessions",
            headers={"Origin": origins.unlisted, "Access-Control-Request-Method": "POST"},
        )
        assert "access-control-allow-origin" not in refused.headers


async def test_an_unlisted_origin_is_blocked_by_the_browser(page: Page, origins: Origins) -> None:
    parley = origins.with_cors
    user, session_id = await user_and_session(parley)
    await page.goto(f"{origins.unlisted}/")
    assert "blocked" in await page.evaluate(FETCH_LIST, [parley.base_url, user.key])
    assert "blocked" in await page.evaluate(FETCH_STREAM, [parley.base_url, user.key, session_id])
    # The preflight failed, so the POST itself never reached Parley: no turn was started.
    async with httpx.AsyncClient(base_url=parley.base_url) as http:
        turns = await http.get(f"/v1/sessions/{session_id}/turns", headers=user.headers)
        assert turns.json()["data"] == []


async def test_cors_is_off_by_default(page: Page, origins: Origins) -> None:
    parley = origins.without_cors
    user, session_id = await user_and_session(parley)
    await page.goto(f"{origins.allowed}/")
    assert "blocked" in await page.evaluate(FETCH_LIST, [parley.base_url, user.key])
    assert "blocked" in await page.evaluate(FETCH_STREAM, [parley.base_url, user.key, session_id])
    async with httpx.AsyncClient(base_url=parley.base_url) as http:
        simple = await http.get("/v1/sessions", headers={"Origin": origins.allowed, **user.headers})
        assert simple.status_code == 200
        assert "access-control-allow-origin" not in simple.headers
