"""A turn survives the browser: disconnect, resume with Last-Event-ID, several listeners, EventSource tokens."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from httpx_sse import aconnect_sse

from tests.conftest import ApiUser
from tests.turns.helpers import (
    Event,
    Simulator,
    attach,
    collect,
    new_session,
    open_stream,
    send,
    sse_events,
    turn_of,
    wait_for_status,
)

PACED = {"tokens_per_second": 150, "output_tokens": 60}


async def test_disconnect_then_resume_has_no_gap_and_no_duplicate(
    client: httpx.AsyncClient, user: ApiUser, sim: Simulator
) -> None:
    await sim.configure(**PACED)
    session_id = await new_session(client, user)
    first = await send(client, user, session_id, {"input": "a long answer please"}, stop_after=8)
    # The browser is gone; the turn carries on.
    turn_id = first.events[0].data["turn"]["id"]
    last_seen = first.ids[-1]

    rest = await attach(client, user, session_id, turn_id, last_event_id=last_seen)
    assert rest.status == 200
    assert rest.ids == list(range(last_seen + 1, last_seen + 1 + len(rest.events)))
    assert rest.names[-1] == "turn.completed"

    whole = first.events + rest.events
    assert [e.id for e in whole] == list(range(1, len(whole) + 1))
    text = "".join(e.data["delta"] for e in whole if e.name == "response.output_text.delta")
    assert text == rest.terminal.data["turn"]["output_text"]
    # Stored whole, though nobody read the middle of it live.
    assert (await turn_of(client, user, session_id, turn_id))["output_text"] == text


async def test_the_turn_finishes_and_is_stored_with_nobody_listening(
    client: httpx.AsyncClient, user: ApiUser, sim: Simulator
) -> None:
    await sim.configure(**PACED)
    session_id = await new_session(client, user)
    first = await send(client, user, session_id, {"input": "go on without me"}, stop_after=3)
    turn_id = first.events[0].data["turn"]["id"]
    turn = await wait_for_status(client, user, session_id, turn_id)
    assert turn["status"] == "completed"
    assert len(turn["output_text"].split()) > 10
    assert turn["usage"]["output_tokens"] >= 60


async def test_resume_from_the_start_and_query_parameter(
    client: httpx.AsyncClient, user: ApiUser, sim: Simulator
) -> None:
    session_id = await new_session(client, user)
    original = await send(client, user, session_id)
    turn_id = original.events[0].data["turn"]["id"]

    replay = await attach(client, user, session_id, turn_id)
    assert [(e.id, e.name, e.raw) for e in replay.events] == [(e.id, e.name, e.raw) for e in original.events]

    async with open_stream(
        client,
        "GET",
        f"/v1/sessions/{session_id}/turns/{turn_id}/events",
        params={"last_event_id": original.ids[-3]},
        headers=user.headers,
    ) as (stream, source):
        await collect(source, stream)
    assert stream.ids == original.ids[-2:]


async def test_two_concurrent_resumers_see_the_same_events(
    client: httpx.AsyncClient, user: ApiUser, sim: Simulator
) -> None:
    await sim.configure(**PACED)
    session_id = await new_session(client, user)
    head = await send(client, user, session_id, {"input": "share this"}, stop_after=2)
    turn_id = head.events[0].data["turn"]["id"]
    one, two = await asyncio.gather(
        attach(client, user, session_id, turn_id, last_event_id=1),
        attach(client, user, session_id, turn_id, last_event_id=1),
    )
    assert one.ids == two.ids
    assert [e.raw for e in one.events] == [e.raw for e in two.events]
    assert one.ids[0] == 2
    assert one.names[-1] == "turn.completed"


async def test_after_the_end_there_is_nothing_more(client: httpx.AsyncClient, user: ApiUser) -> None:
    session_id = await new_session(client, user)
    stream = await send(client, user, session_id)
    turn_id = stream.events[0].data["turn"]["id"]
    done = await client.get(
        f"/v1/sessions/{session_id}/turns/{turn_id}/events",
        headers=user.headers | {"Last-Event-ID": str(stream.ids[-1])},
    )
    assert done.status_code == 204


@pytest.mark.parametrize("garbage", ["abc", "-1", "1.5", "9" * 40])
async def test_garbage_last_event_id_is_400(client: httpx.AsyncClient, user: ApiUser, garbage: str) -> None:
    session_id = await new_session(client, user)
    stream = await send(client, user, session_id)
    turn_id = stream.events[0].data["turn"]["id"]
    response = await client.get(
        f"/v1/sessions/{session_id}/turns/{turn_id}/events", headers=user.headers | {"Last-Event-ID": garbage}
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] in ("invalid_last_event_id", "invalid_value")


async def test_another_users_turn_is_not_found(client: httpx.AsyncClient, user: ApiUser, other_user: ApiUser) -> None:
    session_id = await new_session(client, user)
    stream = await send(client, user, session_id)
    turn_id = stream.events[0].data["turn"]["id"]
    for path in ("", "/events"):
        response = await client.get(f"/v1/sessions/{session_id}/turns/{turn_id}{path}", headers=other_user.headers)
        assert response.status_code == 404
    cancel = await client.post(f"/v1/sessions/{session_id}/turns/{turn_id}/cancel", headers=other_user.headers)
    assert cancel.status_code == 404
    send_into = await client.post(
        f"/v1/sessions/{session_id}/messages", json={"input": "x"}, headers=other_user.headers
    )
    assert send_into.status_code == 404


async def test_stream_url_works_without_a_header_and_only_for_its_turn(
    client: httpx.AsyncClient, user: ApiUser, sim: Simulator
) -> None:
    await sim.configure(**PACED)
    session_id = await new_session(client, user)
    head = await send(client, user, session_id, stop_after=1)
    created = head.events[0].data["turn"]
    events: list[Event] = []
    async with httpx.AsyncClient(timeout=30) as anonymous:  # like EventSource: no Authorization header
        async with aconnect_sse(anonymous, "GET", created["stream_url"]) as source:
            assert source.response.status_code == 200
            async for sse in sse_events(source):
                events.append(Event.of(sse))
        assert events[0].id == 1
        assert events[-1].name == "turn.completed"

        other = await send(client, user, session_id)
        other_turn = other.events[0].data["turn"]["id"]
        token = created["stream_url"].split("token=")[1]
        wrong = await anonymous.get(
            f"{client.base_url}/v1/sessions/{session_id}/turns/{other_turn}/events", params={"token": token}
        )
        assert wrong.status_code == 401
        tampered = await anonymous.get(created["stream_url"][:-2] + "xx")
        assert tampered.status_code == 401
        # The token opens the stream and nothing else.
        as_bearer = await anonymous.get(f"{client.base_url}/v1/sessions", headers={"Authorization": f"Bearer {token}"})
        assert as_bearer.status_code == 401
