"""What a red team found open (issue 24), kept closed: message limits over every input form, the upstream
body's bound, numbers JSON can carry, the Allow header of a 405, and file ids a client may not name."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import ADMIN_TOKEN, ApiUser, RunningParley, run_parley
from tests.turns.helpers import Simulator, conversation_of, new_session, simulator_for

MAX_BODY_BYTES = 1_048_576
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
# Prompt variables as large as a session body may carry (60 x 8,000 two-byte characters: 960 KB of JSON).
BIG_PROMPT = {"id": "pmpt_parley_demo", "variables": {f"v{i}": "é" * 8_000 for i in range(60)}}


@pytest.fixture(scope="module")
def parley(database_url: str, backend: str) -> Iterator[RunningParley]:
    # The upstream bound at its lowest (the request body limit), so that one request within the body limit
    # can outgrow it with the session's prompt.
    with run_parley(database_url, backend, max_upstream_body_bytes=MAX_BODY_BYTES) as running:
        yield running


@pytest.fixture
async def sim(parley: RunningParley, client: httpx.AsyncClient) -> Simulator:
    simulator = simulator_for(parley, client)
    await simulator.configure(tokens_per_second=0, first_token_delay_ms=0, output_tokens=None)
    return simulator


def _error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text[:500]
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"type", "code", "message", "param"}
    return dict(body["error"])


async def _send(client: httpx.AsyncClient, user: ApiUser, session_id: str, body: dict[str, Any]) -> httpx.Response:
    return await client.post(
        f"/v1/sessions/{session_id}/messages", json={**body, "stream": False}, headers=user.headers
    )


async def _nothing_happened(client: httpx.AsyncClient, user: ApiUser, sim: Simulator, session_id: str) -> None:
    """Nothing went upstream for the session and no turn was stored."""
    assert await sim.response_calls(await conversation_of(client, user, session_id)) == []
    turns = await client.get(f"/v1/sessions/{session_id}/turns", headers=user.headers)
    assert turns.json()["data"] == []


# --- 1. the message limit counts every text part of every input form; the upstream body is bounded -------


@pytest.mark.parametrize(
    "message",
    [
        pytest.param({"input": [{"role": "user", "content": "b" * 900_000}]}, id="list-of-one-string"),
        pytest.param(
            {"input": [{"role": "user", "content": [{"type": "input_text", "text": "b" * 32_000}] * 30}]},
            id="30-parts-of-32000",
        ),
        pytest.param(
            {"input": [{"role": "user", "content": "b" * 16_001}, {"role": "user", "content": "b" * 16_000}]},
            id="two-messages",
        ),
        pytest.param(
            {
                "input": [
                    {"role": "user", "content": "b" * 20_000},
                    {"role": "user", "content": [{"type": "input_text", "text": "b" * 12_001}]},
                ]
            },
            id="string-and-parts",
        ),
    ],
)
async def test_the_message_limit_counts_all_text_of_every_input_form(
    client: httpx.AsyncClient, user: ApiUser, sim: Simulator, message: dict[str, Any]
) -> None:
    session_id = await new_session(client, user)
    error = _error(await _send(client, user, session_id, message), 422)
    assert error["code"] == "message_too_long"
    assert error["param"] == "input"
    assert "32,000 characters" in error["message"]
    await _nothing_happened(client, user, sim, session_id)


async def test_a_message_of_exactly_the_limit_in_parts_is_accepted(
    client: httpx.AsyncClient, user: ApiUser, sim: Simulator
) -> None:
    session_id = await new_session(client, user)
    parts = [{"type": "input_text", "text": "b" * 16_000}, {"type": "input_text", "text": "c" * 16_000}]
    response = await _send(client, user, session_id, {"input": [{"role": "user", "content": parts}]})
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "completed"


async def test_the_upstream_body_of_a_message_is_bounded(
    client: httpx.AsyncClient, user: ApiUser, sim: Simulator
) -> None:
    """Each request is within the body limit, but the message with the session's prompt is not."""
    session_id = await new_session(client, user, prompt=BIG_PROMPT)
    attachment = {"type": "input_file", "filename": "notes.txt", "file_data": "QUJD" * 30_000}
    message = {"input": [{"role": "user", "content": [{"type": "input_text", "text": "Read this."}, attachment]}]}
    error = _error(await _send(client, user, session_id, message), 413)
    assert error["code"] == "payload_too_large"
    assert f"{MAX_BODY_BYTES:,} bytes" in error["message"]
    await _nothing_happened(client, user, sim, session_id)
    # The session itself is fine: a message that fits goes through.
    response = await _send(client, user, session_id, {"input": "Hello."})
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "completed"


async def test_the_upstream_body_of_tool_outputs_is_bounded(
    client: httpx.AsyncClient, user: ApiUser, sim: Simulator
) -> None:
    session_id = await new_session(client, user, prompt=BIG_PROMPT)
    waiting = (await _send(client, user, session_id, {"input": "get_weather for Lisbon", "tools": [WEATHER]})).json()
    assert waiting["status"] == "requires_action", waiting
    (call,) = waiting["required_action"]["tool_calls"]
    outputs = f"/v1/sessions/{session_id}/turns/{waiting['id']}/tool_outputs"
    calls_before = len(await sim.response_calls(await conversation_of(client, user, session_id)))

    too_big = {"tool_outputs": [{"call_id": call["call_id"], "output": "é" * 100_000}], "stream": False}
    error = _error(await client.post(outputs, json=too_big, headers=user.headers), 413)
    assert error["code"] == "payload_too_large"
    assert len(await sim.response_calls(await conversation_of(client, user, session_id))) == calls_before
    # The turn still waits for its outputs, and takes ones that fit.
    fits = {"tool_outputs": [{"call_id": call["call_id"], "output": '{"temp_c": 21}'}], "stream": False}
    answered = await client.post(outputs, json=fits, headers=user.headers)
    assert answered.status_code == 200, answered.text
    assert answered.json()["status"] == "completed"


# --- 2. numbers JSON can carry never cause a 500 or a dropped connection --------------------------------


async def test_integers_beyond_64_bits_in_a_tool_schema_are_accepted(
    client: httpx.AsyncClient, user: ApiUser, sim: Simulator
) -> None:
    session_id = await new_session(client, user)
    huge = 2**70
    tool = {
        "type": "function",
        "name": "count_stars",
        "parameters": {"type": "object", "properties": {"n": {"type": "integer", "maximum": huge}}},
    }
    body = {"input": "How many stars are there?", "tools": [tool], "stream": False}
    headers = user.headers | {"Idempotency-Key": "big-integer-1"}
    url = f"/v1/sessions/{session_id}/messages"
    first = await client.post(url, json=body, headers=headers)
    assert first.status_code == 200, first.text
    assert first.json()["status"] == "completed"
    (call,) = await sim.response_calls(await conversation_of(client, user, session_id))
    (sent,) = call["body"]["tools"]
    assert sent["name"] == "count_stars"
    assert sent["parameters"]["properties"]["n"]["maximum"] == pytest.approx(huge)
    # The same request again is recognised as the same (its fingerprint takes the big integer too).
    again = await client.post(url, json=body, headers=headers)
    assert again.status_code == 200, again.text
    assert again.json()["id"] == first.json()["id"]
    other = await client.post(url, json={**body, "input": "And now?"}, headers=headers)
    assert _error(other, 422)["code"] == "idempotency_key_reused"


NON_FINITE = ["1e400", "-1e400", "NaN", "Infinity", "-Infinity"]


@pytest.mark.parametrize("number", NON_FINITE)
async def test_non_finite_numbers_in_a_tool_schema_are_refused(
    client: httpx.AsyncClient, user: ApiUser, sim: Simulator, number: str
) -> None:
    session_id = await new_session(client, user)
    raw = (
        '{"input": "hi", "stream": false, "tools": [{"type": "function", "name": "f", '
        '"parameters": {"type": "object", "properties": {"x": {"type": "number", "maximum": ' + number + "}}}}]}"
    )
    response = await client.post(
        f"/v1/sessions/{session_id}/messages",
        content=raw.encode(),
        headers=user.headers | {"Content-Type": "application/json"},
    )
    error = _error(response, 422)
    assert error["param"] == "tools.0.parameters"
    assert "finite" in error["message"]
    await _nothing_happened(client, user, sim, session_id)


@pytest.mark.parametrize("number", ["1e400", "NaN", str(2**70), "-" + str(2**200)])
async def test_odd_numbers_anywhere_in_a_body_get_a_clear_answer(
    client: httpx.AsyncClient, user: ApiUser, number: str
) -> None:
    """Where a string or a boolean belongs: a 4xx in the envelope, never a 500 or a dropped connection."""
    session_id = await new_session(client, user)
    waiting = (await _send(client, user, session_id, {"input": "get_weather for Porto", "tools": [WEATHER]})).json()
    assert waiting["status"] == "requires_action", waiting
    call_id = waiting["required_action"]["tool_calls"][0]["call_id"]
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    cases = [
        ("POST", "/v1/sessions", '{"metadata": {"k": %s}}', user.headers),
        ("POST", "/v1/sessions", '{"prompt": {"id": "pmpt_parley_demo", "variables": {"x": %s}}}', user.headers),
        ("POST", "/v1/sessions", '{"messages": [{"role": "user", "content": %s}]}', user.headers),
        ("PATCH", f"/v1/sessions/{session_id}", '{"title": %s}', user.headers),
        ("POST", f"/v1/sessions/{session_id}/messages", '{"input": %s}', user.headers),
        ("POST", f"/v1/sessions/{session_id}/messages", '{"input": "hi", "prompt_variables": {"x": %s}}', user.headers),
        ("POST", f"/v1/sessions/{session_id}/messages", '{"input": "hi", "metadata": {"k": %s}}', user.headers),
        ("POST", f"/v1/sessions/{session_id}/messages", '{"input": "hi", "stream": %s}', user.headers),
        (
            "POST",
            f"/v1/sessions/{session_id}/turns/{waiting['id']}/tool_outputs",
            '{"tool_outputs": [{"call_id": "' + call_id + '", "output": %s}]}',
            user.headers,
        ),
        ("PUT", f"/v1/admin/users/{user.id}/budget", '{"monthly_budget_usd": %s}', admin),
    ]
    for method, path, template, headers in cases:
        response = await client.request(
            method,
            path,
            content=(template % number).encode(),
            headers=headers | {"Content-Type": "application/json"},
        )
        error = _error(response, 422)
        assert error["type"] == "invalid_request_error", (path, template)


# --- 3. a 405 names every method of the path -------------------------------------------------------------


async def test_405_allow_lists_every_method_of_the_path(client: httpx.AsyncClient, user: ApiUser) -> None:
    session_id = await new_session(client, user)
    turn = (await _send(client, user, session_id, {"input": "Hi."})).json()
    cases = [
        ("DELETE", "/v1/sessions", {"GET", "POST"}),
        ("PUT", f"/v1/sessions/{session_id}", {"GET", "PATCH", "DELETE"}),
        ("PUT", f"/v1/sessions/{session_id}/messages", {"GET", "POST"}),
        ("DELETE", f"/v1/sessions/{session_id}/turns/{turn['id']}", {"GET"}),
        ("HEAD", f"/v1/sessions/{session_id}/turns/{turn['id']}", {"GET"}),
        ("GET", f"/v1/sessions/{session_id}/turns/{turn['id']}/cancel", {"POST"}),
        ("POST", "/healthz", {"GET"}),
    ]
    for method, path, allowed in cases:
        response = await client.request(method, path, headers=user.headers)
        assert response.status_code == 405, (method, path)
        if method != "HEAD":
            assert _error(response, 405)["code"] == "method_not_allowed"
        assert {m.strip() for m in response.headers["allow"].split(",")} == allowed, (method, path)
        if method != "HEAD":  # a HEAD's answer has no body
            assert response.headers["allow"] in _error(response, 405)["message"]


# --- 5. a raw upstream file id is not found, never sent upstream ------------------------------------------------


@pytest.mark.parametrize(
    "part",
    [
        {"type": "input_image", "file_id": "file-0123456789abcdef"},
        {"type": "input_file", "file_id": "file-0123456789abcdef"},
        {"type": "input_image", "file_id": "file-0123456789abcdef", "image_url": "https://example.com/cat.png"},
    ],
)
async def test_a_raw_upstream_file_id_is_not_found_and_never_sent_upstream(
    client: httpx.AsyncClient, user: ApiUser, sim: Simulator, part: dict[str, Any]
) -> None:
    session_id = await new_session(client, user)
    content = [{"type": "input_text", "text": "What is in this file?"}, part]
    response = await _send(client, user, session_id, {"input": [{"role": "user", "content": content}]})
    error = _error(response, 404)
    assert error["code"] == "file_not_found"
    assert error["param"] == "input.0.content.1.file_id"
    assert "file-0123456789abcdef" in error["message"]
    await _nothing_happened(client, user, sim, session_id)
    logged = str(await sim.requests())
    assert "file-0123456789abcdef" not in logged
