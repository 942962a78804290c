"""Revoking an API key ends what it opened at once: the stream tokens made with it (`turn.stream_url`), and the
event streams open with the key or with those tokens. Another key of the same user keeps working."""

from __future__ import annotations

import asyncio

import httpx
from httpx_sse import EventSource

from tests.conftest import ApiUser, RunningParley, create_api_user
from tests.turns.helpers import Event, Simulator, Stream, new_session, open_stream, send, sse_events

# A turn of 400 tokens at 20 tokens a second runs ~20 s: still running when the key is revoked.
SLOW = {"tokens_per_second": 20, "first_token_delay_ms": 0, "output_tokens": 400}
# Well within the slow turn's life: a stream still open after this was not cut.
CUT_WITHIN_S = 5.0


async def second_key(client: httpx.AsyncClient, parley: RunningParley, user: ApiUser) -> ApiUser:
    created = await client.post(f"/v1/admin/users/{user.id}/keys", json={"name": "other"}, headers=parley.admin_headers)
    assert created.status_code == 201, created.text
    return ApiUser(id=user.id, name=user.name, key=created.json()["key"])


async def revoke(client: httpx.AsyncClient, parley: RunningParley, user: ApiUser) -> None:
    keys = (await client.get(f"/v1/admin/users/{user.id}/keys", headers=parley.admin_headers)).json()["data"]
    [key] = [k for k in keys if user.key.startswith(k["prefix"])]
    revoked = await client.post(f"/v1/admin/keys/{key['id']}/revoke", headers=parley.admin_headers)
    assert revoked.status_code == 200, revoked.text


class Reader:
    """One open event stream, read a few events at a time."""

    def __init__(self, stream: Stream, source: EventSource) -> None:
        self.stream = stream
        self.events = aiter(sse_events(source))

    async def take(self, count: int) -> None:
        for _ in range(count):
            self.stream.events.append(Event.of(await anext(self.events)))

    async def ends_within(self, seconds: float) -> bool:
        """Read the rest: whether the stream ended within `seconds`."""
        try:
            async with asyncio.timeout(seconds):
                async for sse in self.events:
                    self.stream.events.append(Event.of(sse))
        except TimeoutError:
            return False
        return True


async def test_a_stream_url_stops_working_when_its_key_is_revoked(
    client: httpx.AsyncClient, parley: RunningParley
) -> None:
    user = await create_api_user(client)
    other = await second_key(client, parley, user)
    session_id = await new_session(client, user)
    turn = (await send(client, user, session_id)).events[0].data["turn"]
    stream_url = turn["stream_url"]
    assert (await client.get(stream_url)).status_code == 200

    await revoke(client, parley, user)

    refused = await client.get(stream_url)
    assert refused.status_code == 401
    assert refused.json()["error"]["type"] == "authentication_error"
    # The same turn read with the user's other key still works, and its stream_url is made with that key.
    listed = await client.get(f"/v1/sessions/{session_id}/turns/{turn['id']}", headers=other.headers)
    assert listed.status_code == 200
    assert (await client.get(listed.json()["stream_url"])).status_code == 200


async def test_streams_open_with_a_revoked_key_or_its_stream_token_are_cut(
    client: httpx.AsyncClient, parley: RunningParley, sim: Simulator
) -> None:
    await sim.configure(**SLOW)
    user = await create_api_user(client)
    other = await second_key(client, parley, user)
    session_id = await new_session(client, user)
    path = f"/v1/sessions/{session_id}/messages"
    async with open_stream(client, "POST", path, json={"input": "a long one"}, headers=user.headers) as opened:
        with_key = Reader(*opened)
        await with_key.take(2)
        turn = with_key.stream.events[0].data["turn"]
        events = f"/v1/sessions/{session_id}/turns/{turn['id']}/events"
        async with (
            open_stream(client, "GET", turn["stream_url"]) as by_token,
            open_stream(client, "GET", events, headers=other.headers) as by_other_key,
        ):
            with_token, with_other_key = Reader(*by_token), Reader(*by_other_key)
            assert with_token.stream.status == with_other_key.stream.status == 200
            await with_token.take(2)
            await with_other_key.take(2)

            await revoke(client, parley, user)

            assert await with_key.ends_within(CUT_WITHIN_S)
            assert await with_token.ends_within(CUT_WITHIN_S)
            # Cut, not finished: the turn runs on, and the other key's stream goes on with it.
            assert "turn.completed" not in with_key.stream.names + with_token.stream.names
            await asyncio.wait_for(with_other_key.take(3), CUT_WITHIN_S)

    cancelled = await client.post(f"/v1/sessions/{session_id}/turns/{turn['id']}/cancel", headers=other.headers)
    assert cancelled.json()["status"] == "cancelled"
