"""Each fault kind of the simulator: before the first byte an HTTP status, after it one terminal event."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from app.simulator import create_simulator_app
from tests.conftest import ApiUser, RunningParley, create_api_user, run_parley
from tests.servers import free_port, serve
from tests.turns.helpers import Simulator, conversation_of, new_session, send, simulator_for, turn_of

STALL_TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def faulty(database_url: str, backend: str) -> Iterator[RunningParley]:
    """Short upstream stall timeout and fast keep-alives, so stalls are quick to test."""
    with run_parley(
        database_url,
        backend,
        upstream_stall_timeout_s=STALL_TIMEOUT_S,
        sse_ping_interval_s=0.3,
        upstream_recovery_timeout_s=5.0,
    ) as running:
        yield running


@pytest.fixture
async def http(faulty: RunningParley) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=faulty.base_url, timeout=30) as client:
        yield client


@pytest.fixture
async def simulator(faulty: RunningParley, http: httpx.AsyncClient) -> AsyncIterator[Simulator]:
    sim = simulator_for(faulty, http)
    await sim.configure(tokens_per_second=0, first_token_delay_ms=0, output_tokens=None)
    yield sim
    await sim.configure(tokens_per_second=0, first_token_delay_ms=0, output_tokens=None)


@pytest.fixture
async def person(http: httpx.AsyncClient) -> ApiUser:
    return await create_api_user(http)


async def _post(http: httpx.AsyncClient, person: ApiUser, session_id: str, **headers: str) -> httpx.Response:
    return await http.post(
        f"/v1/sessions/{session_id}/messages", json={"input": "hello"}, headers=person.headers | headers
    )


async def test_429_with_short_retry_after_is_retried(
    http: httpx.AsyncClient, person: ApiUser, simulator: Simulator
) -> None:
    session_id = await new_session(http, person)
    conversation = await conversation_of(http, person, session_id)
    await simulator.faults({"kind": "http_error", "status": 429, "retry_after": 1})
    stream = await send(http, person, session_id)
    assert stream.status == 200
    assert stream.names[-1] == "turn.completed"
    assert len(await simulator.response_calls(conversation)) == 2


async def test_503_before_any_body_is_retried(http: httpx.AsyncClient, person: ApiUser, simulator: Simulator) -> None:
    session_id = await new_session(http, person)
    conversation = await conversation_of(http, person, session_id)
    await simulator.faults({"kind": "http_error", "status": 503})
    stream = await send(http, person, session_id)
    assert stream.names[-1] == "turn.completed"
    assert len(await simulator.response_calls(conversation)) == 2


async def test_429_with_long_retry_after_is_passed_on(
    http: httpx.AsyncClient, person: ApiUser, simulator: Simulator
) -> None:
    session_id = await new_session(http, person)
    conversation = await conversation_of(http, person, session_id)
    await simulator.faults({"kind": "http_error", "status": 429, "retry_after": 120})
    key = f"k-{uuid.uuid4()}"
    response = await _post(http, person, session_id, **{"Idempotency-Key": key})
    assert response.status_code == 429
    assert response.headers["retry-after"] == "120"
    assert response.json()["error"]["type"] == "rate_limit_error"
    assert len(await simulator.response_calls(conversation)) == 1
    turns = (await http.get(f"/v1/sessions/{session_id}/turns", headers=person.headers)).json()["data"]
    assert [t["status"] for t in turns] == ["failed"]
    # Nothing started upstream, so the same key may be retried, and the session is free.
    retried = await send(http, person, session_id, {"input": "hello"}, headers={"Idempotency-Key": key})
    assert retried.names[-1] == "turn.completed"


@pytest.mark.parametrize(
    ("status", "expected", "code"),
    [(500, 502, "server_error"), (400, 400, None)],
)
async def test_other_errors_before_the_first_byte(
    http: httpx.AsyncClient, person: ApiUser, simulator: Simulator, status: int, expected: int, code: str | None
) -> None:
    session_id = await new_session(http, person)
    conversation = await conversation_of(http, person, session_id)
    await simulator.faults({"kind": "http_error", "status": status})
    response = await _post(http, person, session_id)
    assert response.status_code == expected
    error = response.json()["error"]
    if status == 400:
        assert error["message"].startswith("The upstream model service rejected the request:")
    assert "Traceback" not in response.text
    assert len(await simulator.response_calls(conversation)) == 1  # no retry: it may have started
    turns = (await http.get(f"/v1/sessions/{session_id}/turns", headers=person.headers)).json()["data"]
    assert turns[0]["status"] == "failed"


async def test_conversation_locked_is_409(http: httpx.AsyncClient, person: ApiUser, simulator: Simulator) -> None:
    session_id = await new_session(http, person)
    await simulator.faults({"kind": "conversation_locked"})
    response = await _post(http, person, session_id)
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "conversation_locked"


async def test_cut_after_some_events_recovers_the_response(
    http: httpx.AsyncClient, person: ApiUser, simulator: Simulator
) -> None:
    session_id = await new_session(http, person)
    await simulator.faults({"kind": "cut", "after_events": 6})
    stream = await send(http, person, session_id)
    assert stream.status == 200
    relayed = [n for n in stream.names if not n.startswith("turn.")]
    assert len(relayed) == 6
    assert sum(n.startswith("turn.") for n in stream.names) == 2
    final = stream.terminal.data["turn"]
    # The upstream finished the response though the stream broke: Parley asked it how it ended.
    assert stream.terminal.name == "turn.completed"
    assert final["usage"]["output_tokens"] > 0
    upstream = await simulator.retrieve(final["response_ids"][0])
    assert final["output_text"] == "".join(
        c["text"] for item in upstream["output"] if item["type"] == "message" for c in item["content"]
    )


async def test_stall_past_the_timeout_fails_the_turn_and_keeps_the_partial_text(
    http: httpx.AsyncClient, person: ApiUser, simulator: Simulator
) -> None:
    session_id = await new_session(http, person)
    await simulator.faults({"kind": "stall", "after_events": 8, "seconds": 4})
    async with http.stream(
        "POST", f"/v1/sessions/{session_id}/messages", json={"input": "stall"}, headers=person.headers
    ) as response:
        raw = b"".join([chunk async for chunk in response.aiter_bytes()])
    assert b": ping" in raw  # keep-alives continue while the upstream is silent
    names = [line[7:].decode() for line in raw.split(b"\n") if line.startswith(b"event: ")]
    assert names[-1] == "turn.failed"
    assert sum(n.startswith("turn.") for n in names) == 2
    turns = (await http.get(f"/v1/sessions/{session_id}/turns", headers=person.headers)).json()["data"]
    turn = turns[0]
    assert turn["status"] == "failed"
    assert turn["error"]["code"] == "upstream_timeout"
    assert turn["response_ids"]


async def test_error_event_fails_the_turn(http: httpx.AsyncClient, person: ApiUser, simulator: Simulator) -> None:
    session_id = await new_session(http, person)
    await simulator.faults({"kind": "error_event", "after_events": 7, "code": "insufficient_quota"})
    stream = await send(http, person, session_id)
    assert "error" in stream.names
    error_event = stream.events[stream.names.index("error")].data
    assert error_event["error"]["code"] == "insufficient_quota"  # relayed nested, as the service sends it
    assert stream.names[-2:] == ["response.failed", "turn.failed"]
    final = stream.terminal.data["turn"]
    assert final["status"] == "failed"
    assert final["error"]["code"] == "insufficient_quota"
    assert final["output_text"] == stream.text
    assert (await turn_of(http, person, session_id, final["id"]))["status"] == "failed"


async def test_incomplete_response(http: httpx.AsyncClient, person: ApiUser, simulator: Simulator) -> None:
    # Cut short a few tokens into the answer (a reasoning summary may come first): where that is, an
    # undisturbed turn on the same input shows (the simulator is deterministic).
    undisturbed = await send(http, person, await new_session(http, person))
    first_delta = undisturbed.names.index("response.output_text.delta")
    session_id = await new_session(http, person)
    # The simulator counts the upstream's events; Parley's turn.created comes first in what the client sees.
    await simulator.faults({"kind": "incomplete", "after_events": first_delta - 1 + 3})
    stream = await send(http, person, session_id)
    assert stream.names[-2:] == ["response.incomplete", "turn.incomplete"]
    final = stream.terminal.data["turn"]
    assert final["status"] == "incomplete"
    assert final["error"]["code"] == "max_output_tokens"
    assert final["output_text"] == stream.text
    assert final["usage"] is not None
    history = (await http.get(f"/v1/sessions/{session_id}/messages", headers=person.headers)).json()["data"]
    assert history[-1]["role"] == "assistant"
    assert history[-1]["status"] == "incomplete"


async def test_unreachable_upstream_is_502_after_retries(database_url: str, backend: str) -> None:
    port = free_port()
    with run_parley(
        database_url,
        backend,
        openai_api_key="sk-test",
        openai_base_url=f"http://127.0.0.1:{port}/v1",
        upstream_max_attempts=2,
    ) as running:
        async with httpx.AsyncClient(base_url=running.base_url, timeout=30) as client:
            person = await create_api_user(client)
            with serve(create_simulator_app(), port=port):
                session_id = await new_session(client, person)
            # The upstream is gone now: connection refused, provably not started, so retried, then 502.
            response = await _post(client, person, session_id)
            assert response.status_code == 502
            assert response.json()["error"]["code"] == "upstream_unreachable"
            turns = (await client.get(f"/v1/sessions/{session_id}/turns", headers=person.headers)).json()["data"]
            assert turns[0]["status"] == "failed"
            assert turns[0]["error"]["code"] == "upstream_unreachable"
