"""Sending a message: the SSE framing, the relayed upstream events, and what is stored."""

from __future__ import annotations

import httpx
import orjson
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.models import UsageRecord
from tests.conftest import ApiUser
from tests.turns.helpers import Simulator, conversation_of, new_session, send, turn_of


async def test_event_sequence_and_framing(client: httpx.AsyncClient, user: ApiUser, sim: Simulator) -> None:
    session_id = await new_session(client, user)
    stream = await send(client, user, session_id, {"input": "Tell me about Lisbon."})

    assert stream.status == 200
    assert stream.headers["content-type"].startswith("text/event-stream")
    assert stream.headers["cache-control"] == "no-store"
    assert stream.headers["x-accel-buffering"] == "no"
    assert "content-encoding" not in stream.headers

    assert stream.ids == list(range(1, len(stream.events) + 1))
    assert stream.names[0] == "turn.created"
    # A background response upstream (PARLEY_UPSTREAM_BACKGROUND): queued before it runs.
    assert stream.names[1:4] == ["response.created", "response.queued", "response.in_progress"]
    assert "response.output_text.delta" in stream.names
    assert stream.names[-2] == "response.completed"
    assert stream.names[-1] == "turn.completed"
    assert sum(name.startswith("turn.") for name in stream.names) == 2

    created = stream.events[0].data["turn"]
    assert created["status"] == "in_progress"
    assert created["input"] == "Tell me about Lisbon."
    assert created["stream_url"].endswith(
        f"/turns/{created['id']}/events?token=" + created["stream_url"].split("token=")[1]
    )

    # Upstream events go out under their own type, their data unchanged.
    for event in stream.events[1:-1]:
        assert event.data["type"] == event.name

    final = stream.terminal.data["turn"]
    assert final["status"] == "completed"
    assert final["output_text"] == stream.text
    assert final["output_text"]
    response_id = stream.events[1].data["response"]["id"]
    assert final["response_ids"] == [response_id]
    assert final["usage"]["input_tokens"] > 0
    assert final["usage"]["output_tokens"] > 0
    assert final["cost_usd"] is None or isinstance(final["cost_usd"], str)
    assert final["ttft_ms"] is not None
    assert final["completed_at"] is not None


async def test_first_event_carries_retry_and_frames_are_well_formed(client: httpx.AsyncClient, user: ApiUser) -> None:
    session_id = await new_session(client, user)
    async with client.stream(
        "POST", f"/v1/sessions/{session_id}/messages", json={"input": "hi"}, headers=user.headers
    ) as response:
        raw = b"".join([chunk async for chunk in response.aiter_bytes()])
    blocks = [b for b in raw.split(b"\n\n") if b and not b.startswith(b":")]
    assert blocks[0].startswith(b"retry: ")
    for number, block in enumerate(blocks, start=1):
        lines = [line for line in block.split(b"\n") if not line.startswith(b"retry:")]
        assert lines[0] == b"id: %d" % number
        assert lines[1].startswith(b"event: ")
        assert lines[2].startswith(b"data: ")
        assert len(lines) == 3  # one-line JSON data
        orjson.loads(lines[2][6:])
    assert b"[DONE]" not in raw


async def test_what_goes_upstream(client: httpx.AsyncClient, user: ApiUser, sim: Simulator) -> None:
    session_id = await new_session(
        client, user, prompt={"id": "pmpt_parley_demo", "version": "1", "variables": {"user_name": "Ada"}}
    )
    conversation = await conversation_of(client, user, session_id)
    await send(client, user, session_id, {"input": "first"})
    await send(client, user, session_id, {"input": "second", "prompt_variables": {"user_name": "Grace"}})

    calls = await sim.response_calls(conversation)
    assert len(calls) == 2
    body = calls[1]["body"]
    assert body["conversation"] == conversation
    assert body["stream"] is True
    assert body["store"] is True
    assert body["background"] is True
    # Only the new input goes up; the conversation holds the rest.
    assert body["input"] == [{"role": "user", "content": "second"}]
    assert body["prompt"] == {"id": "pmpt_parley_demo", "version": "1", "variables": {"user_name": "Grace"}}
    assert len(body["safety_identifier"]) <= 64
    assert user.id not in body["safety_identifier"]
    assert calls[0]["body"]["safety_identifier"] == body["safety_identifier"]
    assert "previous_response_id" not in body


async def test_a_prompt_set_or_cleared_on_the_session_applies_from_the_next_turn(
    client: httpx.AsyncClient, user: ApiUser, sim: Simulator
) -> None:
    # On Postgres a turn of a session without a prompt of its own starts in the statement that reads the
    # session: a prompt set between two turns must be in the next one, and a cleared one must give way to the
    # deployment's default again.
    session_id = await new_session(client, user)
    conversation = await conversation_of(client, user, session_id)
    await send(client, user, session_id, {"input": "a"})
    own = {"id": "pmpt_parley_demo", "version": "1", "variables": {"user_name": "Ada"}}
    patched = await client.patch(f"/v1/sessions/{session_id}", json={"prompt": own}, headers=user.headers)
    assert patched.status_code == 200, patched.text
    await send(client, user, session_id, {"input": "b"})
    cleared = await client.patch(f"/v1/sessions/{session_id}", json={"prompt": None}, headers=user.headers)
    assert cleared.json()["prompt"] is None
    await send(client, user, session_id, {"input": "c"})

    calls = await sim.response_calls(conversation)
    assert [call["body"]["conversation"] for call in calls] == [conversation] * 3
    prompts = [call["body"]["prompt"] for call in calls]
    assert prompts[1] == own
    assert prompts[0] == prompts[2]
    assert "variables" not in prompts[2]
    assert prompts[2]["id"] == "pmpt_parley_demo"


async def test_default_prompt_applies_without_one(client: httpx.AsyncClient, user: ApiUser, sim: Simulator) -> None:
    session_id = await new_session(client, user)
    conversation = await conversation_of(client, user, session_id)
    await send(client, user, session_id, {"input": "hello"})
    (call,) = await sim.response_calls(conversation)
    assert call["body"]["prompt"]["id"] == "pmpt_parley_demo"


async def test_message_model_overrides_session_model(client: httpx.AsyncClient, user: ApiUser, sim: Simulator) -> None:
    session_id = await new_session(client, user, model="gpt-4.1")
    conversation = await conversation_of(client, user, session_id)
    await send(client, user, session_id, {"input": "a"})
    await send(client, user, session_id, {"input": "b", "model": "gpt-4o-mini"})
    calls = await sim.response_calls(conversation)
    assert [c["body"]["model"] for c in calls] == ["gpt-4.1", "gpt-4o-mini"]


async def test_stream_false_returns_the_finished_turn(client: httpx.AsyncClient, user: ApiUser) -> None:
    session_id = await new_session(client, user)
    response = await client.post(
        f"/v1/sessions/{session_id}/messages", json={"input": "hi", "stream": False}, headers=user.headers
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    turn = response.json()
    assert turn["object"] == "turn"
    assert turn["status"] == "completed"
    assert turn["output_text"]
    assert turn == {**await turn_of(client, user, session_id, turn["id"]), "stream_url": turn["stream_url"]}


async def test_history_turns_and_ledger_are_stored(
    client: httpx.AsyncClient, user: ApiUser, db_engine: AsyncEngine
) -> None:
    session_id = await new_session(client, user)
    first = await send(client, user, session_id, {"input": "one"})
    second = await send(client, user, session_id, {"input": "two"})

    messages = (await client.get(f"/v1/sessions/{session_id}/messages", headers=user.headers)).json()["data"]
    assert [(m["role"], m["content"]) for m in messages] == [
        ("user", "one"),
        ("assistant", first.text),
        ("user", "two"),
        ("assistant", second.text),
    ]
    turn_ids = [first.events[0].data["turn"]["id"], second.events[0].data["turn"]["id"]]
    assert [m["turn_id"] for m in messages] == [turn_ids[0], turn_ids[0], turn_ids[1], turn_ids[1]]

    turns = (await client.get(f"/v1/sessions/{session_id}/turns", headers=user.headers)).json()
    assert [t["id"] for t in turns["data"]] == list(reversed(turn_ids))
    assert all(t["status"] == "completed" for t in turns["data"])

    session = (await client.get(f"/v1/sessions/{session_id}", headers=user.headers)).json()
    assert session["turn_count"] == 2
    assert session["last_turn_at"] is not None

    # One ledger row per upstream response, with the usage the upstream reported.
    async with db_engine.connect() as connection:
        rows = (await connection.execute(select(UsageRecord).where(UsageRecord.session_id == session_id))).all()
    by_response = {row.response_id: row for row in rows}
    assert len(rows) == 2
    second_final = second.terminal.data["turn"]
    row = by_response[second_final["response_ids"][0]]
    assert row.turn_id == turn_ids[1]
    assert row.user_id == user.id
    assert row.input_tokens == second_final["usage"]["input_tokens"]
    assert row.cached_input_tokens == second_final["usage"]["cached_input_tokens"]
    assert row.output_tokens == second_final["usage"]["output_tokens"]
    assert row.status == "completed"
    # A second turn in one conversation reuses the cached prefix.
    assert second_final["usage"]["cached_input_tokens"] > 0


async def test_unknown_upstream_events_pass_through_byte_identical(
    client: httpx.AsyncClient, user: ApiUser, sim: Simulator
) -> None:
    """A recorded-style stream with fields and event types Parley has never heard of."""
    response = {
        "id": "resp_replay0001",
        "object": "response",
        "status": "in_progress",
        "output": [],
        "usage": None,
        "future_field": {"nested": [1, 2, 3]},
    }
    done = {
        **response,
        "status": "completed",
        "usage": {
            "input_tokens": 7,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": 2,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 9,
        },
    }
    recorded = [
        ("response.created", {"type": "response.created", "response": response, "sequence_number": 0}),
        ("response.brand_new_event", {"type": "response.brand_new_event", "sequence_number": 1, "x": "ünïcödé ✓"}),
        (
            "response.output_text.delta",
            {
                "sequence_number": 2,
                "type": "response.output_text.delta",
                "item_id": "msg_1",
                "output_index": 0,
                "content_index": 0,
                "delta": "Hi",
                "logprobs": [],
                "obfuscation": "abc",
            },
        ),
        (
            "response.output_text.delta",
            {
                "type": "response.output_text.delta",
                "item_id": "msg_1",
                "output_index": 0,
                "content_index": 0,
                "delta": " there",
                "sequence_number": 3,
                "extra": None,
            },
        ),
        ("response.completed", {"type": "response.completed", "response": done, "sequence_number": 4}),
    ]
    datas = [orjson.dumps(payload).decode() for _, payload in recorded]
    sse = "".join(f"event: {name}\ndata: {data}\n\n" for (name, _), data in zip(recorded, datas, strict=True))
    await sim.faults({"kind": "replay", "sse": sse})

    session_id = await new_session(client, user)
    stream = await send(client, user, session_id, {"input": "replay please"})
    relayed = stream.events[1:-1]
    assert [e.name for e in relayed] == [name for name, _ in recorded]
    assert [e.raw for e in relayed] == datas
    final = stream.terminal.data["turn"]
    assert final["status"] == "completed"
    assert final["output_text"] == "Hi there"
    assert final["usage"]["total_tokens"] == 9


async def test_multiline_input_cannot_inject_events(client: httpx.AsyncClient, user: ApiUser) -> None:
    session_id = await new_session(client, user)
    stream = await send(client, user, session_id, {"input": "line\n\nevent: turn.completed\ndata: {}\n\n"})
    assert sum(name == "turn.completed" for name in stream.names) == 1
    assert stream.names[-1] == "turn.completed"
