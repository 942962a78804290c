"""Each fault kind of the simulator: before the first byte an HTTP status, after it one terminal event."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.models import UsageRecord
from app.simulator import create_simulator_app
from tests.conftest import ApiUser, RunningParley, create_api_user, run_parley
from tests.servers import free_port, serve
from tests.turns.helpers import (
    UPSTREAM_AUTH,
    Simulator,
    attach,
    conversation_of,
    new_session,
    send,
    simulator_for,
    turn_of,
)

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


async def test_a_cut_stream_is_reattached_with_no_gap_and_no_repeat(
    http: httpx.AsyncClient, person: ApiUser, simulator: Simulator, db_engine: AsyncEngine
) -> None:
    # The same question undisturbed, for comparison (the simulator answers an input the same way every time).
    undisturbed = await send(http, person, await new_session(http, person), {"input": "Tell me about Porto."})
    session_id = await new_session(http, person)
    await simulator.faults({"kind": "cut", "after_events": 6})

    stream = await send(http, person, session_id, {"input": "Tell me about Porto."})

    # The connection dropped after six upstream events; the background response went on, and Parley
    # re-attached after the sixth: every event once, in order, as if nothing had happened.
    assert stream.status == 200
    assert stream.ids == list(range(1, len(stream.events) + 1))
    assert stream.names == undisturbed.names
    relayed = [event.data for event in stream.events if not event.name.startswith("turn.")]
    assert [data["sequence_number"] for data in relayed] == list(range(len(relayed)))
    final = stream.terminal.data["turn"]
    expected = undisturbed.terminal.data["turn"]
    assert stream.terminal.name == "turn.completed"
    assert final["output_text"] == stream.text == expected["output_text"]
    assert final["usage"] == expected["usage"]
    assert final["cost_usd"] == expected["cost_usd"]
    (response_id,) = final["response_ids"]
    async with db_engine.connect() as connection:
        rows = (await connection.execute(select(UsageRecord).where(UsageRecord.turn_id == final["id"]))).all()
    assert [(row.response_id, row.status, row.output_tokens) for row in rows] == [
        (response_id, "completed", expected["usage"]["output_tokens"])
    ]
    reattached = [
        request
        for request in await simulator.requests()
        if request["method"] == "GET" and request["path"] == f"/v1/responses/{response_id}"
    ]
    assert [request["query"] for request in reattached] == [{"stream": "true", "starting_after": "5"}]
    # A listener that joins afterwards replays the same events.
    replayed = await attach(http, person, session_id, final["id"], last_event_id=0)
    assert [(event.id, event.raw) for event in replayed.events] == [(event.id, event.raw) for event in stream.events]


async def test_a_cut_stream_without_background_mode_fails_and_keeps_the_partial_text(
    database_url: str, backend: str
) -> None:
    with run_parley(database_url, backend, upstream_background=False) as parley:
        async with httpx.AsyncClient(base_url=parley.base_url, timeout=30) as client:
            person = await create_api_user(client)
            simulator = simulator_for(parley, client)
            await simulator.configure(tokens_per_second=0, first_token_delay_ms=0, output_tokens=40)
            # Cut three deltas into the answer (a reasoning summary may come first): where that is, an undisturbed
            # turn on the same input shows; Parley's turn.created comes before the upstream's events.
            undisturbed = await send(client, person, await new_session(client, person), {"input": "Cut me off."})
            first_delta = undisturbed.names.index("response.output_text.delta") - 1
            session_id = await new_session(client, person)
            conversation = await conversation_of(client, person, session_id)
            await simulator.faults({"kind": "cut", "after_events": first_delta + 3})

            stream = await send(client, person, session_id, {"input": "Cut me off."})

            final = stream.terminal.data["turn"]
            assert stream.terminal.name == "turn.failed"
            assert final["error"]["code"] == "upstream_disconnected"
            assert final["output_text"] == stream.text
            assert stream.text
            assert final["usage"] is None
            assert final["cost_usd"] is None
            (call,) = await simulator.response_calls(conversation)
            assert "background" not in call["body"]
            # Parley did not ask for the response again: there is nothing to ask for.
            requests = await simulator.requests()
            assert not [r for r in requests if r["method"] == "GET" and r["path"].startswith("/v1/responses/")]
            # A response that was not in the background is gone with its connection.
            (response_id,) = final["response_ids"]
            for query in ({}, {"stream": "true"}):
                gone = await client.get(
                    f"{parley.simulator_url}/v1/responses/{response_id}", params=query, headers=UPSTREAM_AUTH
                )
                assert gone.status_code == 404, gone.text
            # The history keeps the partial answer, and so does the conversation the next turn reads.
            history = (await client.get(f"/v1/sessions/{session_id}/messages", headers=person.headers)).json()
            assert [(m["role"], m["content"], m["status"]) for m in history["data"]] == [
                ("user", "Cut me off.", "completed"),
                ("assistant", stream.text, "failed"),
            ]
            assert await simulator.conversation_messages(conversation) == [
                ("user", "Cut me off."),
                ("assistant", stream.text),
            ]
            after = await send(client, person, session_id, {"input": "Go on."})
            assert after.terminal.name == "turn.completed"


async def test_an_upstream_that_refuses_background_mode_says_which_setting_to_change(
    database_url: str, backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An organisation with zero data retention stores nothing, so it refuses background responses."""
    port = free_port()
    upstream = {"openai_api_key": "sk-test", "openai_base_url": f"http://127.0.0.1:{port}/v1"}
    with serve(create_simulator_app(zero_data_retention=True), port=port):
        with run_parley(database_url, backend, **upstream) as parley:
            async with httpx.AsyncClient(base_url=parley.base_url, timeout=30) as client:
                person = await create_api_user(client)
                session_id = await new_session(client, person)
                with caplog.at_level(logging.ERROR, logger="app.streaming.turn_runner"):
                    refused = await _post(client, person, session_id)
                    again = await _post(client, person, session_id)
                assert refused.status_code == again.status_code == 502
                error = refused.json()["error"]
                assert error["code"] == "background_refused"
                assert "PARLEY_UPSTREAM_BACKGROUND=false" in error["message"]
                turns = (await client.get(f"/v1/sessions/{session_id}/turns", headers=person.headers)).json()["data"]
                assert [t["status"] for t in turns] == ["failed", "failed"]
                assert all("PARLEY_UPSTREAM_BACKGROUND=false" in t["error"]["message"] for t in turns)
                said = [
                    r.getMessage() for r in caplog.records if r.getMessage().startswith("upstream.background_refused")
                ]
                assert len(said) == 1, said  # one clear line, not one per turn
                assert "PARLEY_UPSTREAM_BACKGROUND=false" in said[0]
        with run_parley(database_url, backend, upstream_background=False, **upstream) as parley:
            async with httpx.AsyncClient(base_url=parley.base_url, timeout=30) as client:
                person = await create_api_user(client)
                session_id = await new_session(client, person)
                assert (await send(client, person, session_id)).terminal.name == "turn.completed"


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
    # Parley stopped waiting, so it stopped the background response too: billed for what it made, and no more.
    upstream = await simulator.retrieve(turn["response_ids"][0])
    assert upstream["status"] == "cancelled"
    assert turn["usage"] == {
        "input_tokens": upstream["usage"]["input_tokens"],
        "cached_input_tokens": upstream["usage"]["input_tokens_details"]["cached_tokens"],
        "output_tokens": upstream["usage"]["output_tokens"],
        "reasoning_tokens": upstream["usage"]["output_tokens_details"]["reasoning_tokens"],
        "total_tokens": upstream["usage"]["total_tokens"],
    }


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
