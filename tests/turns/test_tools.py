"""Function tools: Parley's own run in a loop between responses; the client's are handed over with
turn.requires_action and answered through tool_outputs, the turn going on with continuous ids."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from sqlalchemy import select

from app.db.engine import build_engine
from app.db.models import UsageRecord
from tests.conftest import ApiUser, RunningParley, create_api_user, run_parley
from tests.turns.helpers import (
    Simulator,
    attach,
    collect,
    conversation_of,
    new_session,
    open_stream,
    send,
    simulator_for,
)

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.fixture(scope="module")
def tooled(database_url: str, backend: str) -> Iterator[RunningParley]:
    # Sweeps often: a turn waiting for its client finds its event log compacted (kept) when it goes on.
    with run_parley(database_url, backend, tools=["current_time", "calculator"], turn_lease_s=0.2) as running:
        yield running


@pytest.fixture
async def http(tooled: RunningParley) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=tooled.base_url, timeout=30) as client:
        yield client


@pytest.fixture
async def person(http: httpx.AsyncClient) -> ApiUser:
    return await create_api_user(http)


@pytest.fixture
def sim(tooled: RunningParley, http: httpx.AsyncClient) -> Simulator:
    return simulator_for(tooled, http)


async def _ledger(tooled: RunningParley, turn_id: str) -> list[UsageRecord]:
    engine = build_engine(tooled.settings.database_url)
    try:
        async with engine.connect() as connection:
            return list((await connection.execute(select(UsageRecord).where(UsageRecord.turn_id == turn_id))).all())  # type: ignore[arg-type]
    finally:
        await engine.dispose()


async def test_server_tools_run_in_a_loop(
    http: httpx.AsyncClient, person: ApiUser, sim: Simulator, tooled: RunningParley
) -> None:
    session_id = await new_session(http, person)
    conversation = await conversation_of(http, person, session_id)
    stream = await send(http, person, session_id, {"input": "Use the calculator for (12+30)*7/3 please"})
    assert stream.ids == list(range(1, len(stream.events) + 1))
    names = stream.names
    started = names.index("turn.tool_call.started")
    completed = names.index("turn.tool_call.completed")
    assert names.count("response.created") == 2
    assert names.index("response.completed") < started < completed < len(names) - 1
    assert names[-1] == "turn.completed"
    call = stream.events[started].data
    assert call["name"] == "calculator"
    done = stream.events[completed].data
    assert done["call_id"] == call["call_id"]
    assert json.loads(done["output"])["result"] == 98.0
    assert done["error"] is None
    assert done["duration_ms"] >= 0

    calls = await sim.response_calls(conversation)
    assert len(calls) == 2
    assert {tool["name"] for tool in calls[0]["body"]["tools"]} == {"current_time", "calculator"}
    # The follow-up sends only the new output; the conversation holds the call.
    assert calls[1]["body"]["input"] == [
        {"type": "function_call_output", "call_id": call["call_id"], "output": done["output"]}
    ]
    final = stream.terminal.data["turn"]
    assert len(final["response_ids"]) == 2
    rows = await _ledger(tooled, final["id"])
    assert sorted(r.response_id for r in rows) == sorted(final["response_ids"])
    assert final["usage"]["input_tokens"] == sum(r.input_tokens or 0 for r in rows)


async def test_a_tool_failure_goes_back_to_the_model(http: httpx.AsyncClient, person: ApiUser, sim: Simulator) -> None:
    session_id = await new_session(http, person)
    conversation = await conversation_of(http, person, session_id)
    stream = await send(http, person, session_id, {"input": "Use the calculator for 1/0 please"})
    done = next(e.data for e in stream.events if e.name == "turn.tool_call.completed")
    # The tool failed: the listener is told why, and the model gets the same words as the call's output.
    assert done["name"] == "calculator"
    assert "division by zero" in done["error"]
    assert json.loads(done["output"]) == {"error": done["error"]}
    calls = await sim.response_calls(conversation)
    assert calls[1]["body"]["input"] == [
        {"type": "function_call_output", "call_id": done["call_id"], "output": done["output"]}
    ]
    # The turn is not crashed by it: the model answered after the failed call.
    assert stream.names[-1] == "turn.completed"
    assert stream.terminal.data["turn"]["status"] == "completed"
    assert len(stream.terminal.data["turn"]["response_ids"]) == 2


async def test_client_tools_are_handed_over_and_the_turn_goes_on(
    http: httpx.AsyncClient, person: ApiUser, sim: Simulator, tooled: RunningParley
) -> None:
    session_id = await new_session(http, person)
    conversation = await conversation_of(http, person, session_id)
    first = await send(http, person, session_id, {"input": "get_weather for Lisbon", "tools": [WEATHER]})
    assert first.names[-1] == "turn.requires_action"
    waiting = first.terminal.data["turn"]
    assert waiting["status"] == "requires_action"
    (call,) = waiting["required_action"]["tool_calls"]
    assert call["name"] == "get_weather"
    assert json.loads(call["arguments"]) == {"city": "get_weather for Lisbon"}
    turn_id = waiting["id"]
    await asyncio.sleep(0.2)  # several sweeps: the waiting turn's log is kept compact until it goes on

    # The session is held until the calls are answered.
    busy = await http.post(f"/v1/sessions/{session_id}/messages", json={"input": "hi"}, headers=person.headers)
    assert busy.status_code == 409
    wrong = await http.post(
        f"/v1/sessions/{session_id}/turns/{turn_id}/tool_outputs",
        json={"tool_outputs": [{"call_id": "call_nope", "output": "x"}]},
        headers=person.headers,
    )
    assert wrong.status_code == 422
    assert wrong.json()["error"]["code"] == "tool_outputs_mismatch"

    async with open_stream(
        http,
        "POST",
        f"/v1/sessions/{session_id}/turns/{turn_id}/tool_outputs",
        json={"tool_outputs": [{"call_id": call["call_id"], "output": '{"temp_c": 21, "sky": "sunny"}'}]},
        headers=person.headers,
    ) as (rest, source):
        assert rest.status == 200
        await collect(source, rest)
    assert rest.ids[0] == first.ids[-1] + 1
    assert rest.ids == list(range(rest.ids[0], rest.ids[0] + len(rest.events)))
    assert rest.names[-1] == "turn.completed"
    final = rest.terminal.data["turn"]
    assert final["id"] == turn_id
    assert final["required_action"] is None
    assert len(final["response_ids"]) == 2
    calls = await sim.response_calls(conversation)
    assert calls[-1]["body"]["input"] == [
        {"type": "function_call_output", "call_id": call["call_id"], "output": '{"temp_c": 21, "sky": "sunny"}'}
    ]
    # Answering twice is refused; the whole turn replays from the start with continuous ids.
    again = await http.post(
        f"/v1/sessions/{session_id}/turns/{turn_id}/tool_outputs",
        json={"tool_outputs": [{"call_id": call["call_id"], "output": "x"}]},
        headers=person.headers,
    )
    assert again.status_code == 409
    whole = await attach(http, person, session_id, turn_id)
    assert whole.ids == list(range(1, len(whole.events) + 1))
    assert whole.names.count("turn.requires_action") == 1
    assert whole.names[-1] == "turn.completed"
    rows = await _ledger(tooled, turn_id)
    assert len(rows) == 2
    assert final["usage"]["output_tokens"] == sum(r.output_tokens or 0 for r in rows)
    # The session is free again.
    assert (await send(http, person, session_id, {"input": "thanks"})).names[-1] == "turn.completed"


async def test_cancelling_a_turn_that_waits_for_the_client(http: httpx.AsyncClient, person: ApiUser) -> None:
    session_id = await new_session(http, person)
    first = await send(http, person, session_id, {"input": "get_weather for Porto", "tools": [WEATHER]})
    turn_id = first.terminal.data["turn"]["id"]
    cancelled = await http.post(f"/v1/sessions/{session_id}/turns/{turn_id}/cancel", headers=person.headers)
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    # The open call was closed in the conversation, so the session goes on.
    after = await send(http, person, session_id, {"input": "never mind"})
    assert after.names[-1] == "turn.completed"


async def test_client_tools_may_not_take_server_tool_names(http: httpx.AsyncClient, person: ApiUser) -> None:
    session_id = await new_session(http, person)
    clash = {**WEATHER, "name": "calculator"}
    response = await http.post(
        f"/v1/sessions/{session_id}/messages", json={"input": "x", "tools": [clash]}, headers=person.headers
    )
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "tool_name_taken"
    bad = await http.post(
        f"/v1/sessions/{session_id}/messages",
        json={"input": "x", "tools": [{"type": "function", "name": "bad name!"}]},
        headers=person.headers,
    )
    assert bad.status_code == 422


async def test_a_required_tool_choice_forces_one_call_then_lets_the_model_answer(
    http: httpx.AsyncClient, person: ApiUser, sim: Simulator
) -> None:
    session_id = await new_session(http, person)
    conversation = await conversation_of(http, person, session_id)
    stream = await send(
        http,
        person,
        session_id,
        {"input": "Use the calculator for 6*7 please", "options": {"tool_choice": "required"}},
    )
    assert stream.names[-1] == "turn.completed", stream.terminal.data
    calls = await sim.response_calls(conversation)
    assert [call["body"]["tool_choice"] for call in calls] == ["required", "auto"]


async def test_the_history_keeps_the_tool_call_and_its_output(
    http: httpx.AsyncClient, person: ApiUser, sim: Simulator
) -> None:
    session_id = await new_session(http, person)
    stream = await send(http, person, session_id, {"input": "Use the calculator for (12+30)*7/3 please"})
    done = next(e.data for e in stream.events if e.name == "turn.tool_call.completed")
    messages = (await http.get(f"/v1/sessions/{session_id}/messages", headers=person.headers)).json()["data"]
    items = messages[-1]["items"]
    assert [item["type"] for item in items if item["type"] != "reasoning"] == [
        "function_call",
        "function_call_output",
        "message",
    ]
    call, output = (item for item in items if item["type"].startswith("function_call"))
    assert (call["name"], call["call_id"]) == ("calculator", done["call_id"])
    assert output == {"type": "function_call_output", "call_id": done["call_id"], "output": done["output"]}
