"""Per-user limits at a turn's start, counted under the owner's lock: concurrent starts of one user on two
replicas are admitted exactly up to the limit, and a request that is refused by no limit of its own (a retry
of a started turn, a second send into a busy session) gets the answer it would get without limits."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest

from app.simulator import create_simulator_app
from tests.conftest import RunningParley, create_api_user, run_parley
from tests.servers import serve
from tests.turns.helpers import Simulator, new_session, send

LIMIT = 2


@pytest.fixture(scope="module")
def replicas(database_url: str, backend: str) -> Iterator[tuple[RunningParley, RunningParley, str]]:
    with serve(create_simulator_app()) as simulator_url:
        settings = {
            "rate_limit_concurrent_turns": LIMIT,
            "rate_limit_turns_per_minute": 1000,
            "openai_api_key": "sk-test",
            "openai_base_url": f"{simulator_url}/v1",
        }
        with run_parley(database_url, backend, **settings) as a, run_parley(database_url, backend, **settings) as b:
            yield a, b, simulator_url


async def _status_of_start(client: httpx.AsyncClient, headers: dict[str, str], session_id: str) -> tuple[int, str]:
    """Start a turn and leave it running: the response's status, and its error code if refused."""
    async with client.stream(
        "POST", f"/v1/sessions/{session_id}/messages", json={"input": "a long one"}, headers=headers
    ) as response:
        if response.status_code != 200:
            await response.aread()
            return response.status_code, response.json()["error"]["code"]
        return 200, ""


async def _cancel_all(client: httpx.AsyncClient, headers: dict[str, str], session_ids: list[str]) -> None:
    """End the turns left running (the servers would wait for them when they stop)."""
    for session_id in session_ids:
        for turn in (await client.get(f"/v1/sessions/{session_id}/turns", headers=headers)).json()["data"]:
            await client.post(f"/v1/sessions/{session_id}/turns/{turn['id']}/cancel", headers=headers)


async def test_concurrent_starts_on_two_replicas_are_admitted_up_to_the_limit(
    replicas: tuple[RunningParley, RunningParley, str],
) -> None:
    a, b, simulator_url = replicas
    async with (
        httpx.AsyncClient(base_url=a.base_url, timeout=30) as ca,
        httpx.AsyncClient(base_url=b.base_url, timeout=30) as cb,
    ):
        sim = Simulator(ca, simulator_url)
        await sim.configure(tokens_per_second=20, output_tokens=200)  # the admitted turns stay in flight
        try:
            user = await create_api_user(ca)
            sessions = [await new_session(ca, user) for _ in range(16)]
            results = await asyncio.gather(
                *(_status_of_start(ca if i % 2 else cb, user.headers, s) for i, s in enumerate(sessions))
            )
            assert sorted(results) == [(200, "")] * LIMIT + [(429, "too_many_concurrent_turns")] * (16 - LIMIT)
            await _cancel_all(ca, user.headers, sessions)
        finally:
            await sim.configure(tokens_per_second=0, output_tokens=None)


async def test_at_the_limit_a_retry_replays_and_a_busy_session_is_a_conflict(
    replicas: tuple[RunningParley, RunningParley, str],
) -> None:
    a, _, simulator_url = replicas
    async with httpx.AsyncClient(base_url=a.base_url, timeout=30) as client:
        sim = Simulator(client, simulator_url)
        await sim.configure(tokens_per_second=20, output_tokens=200)
        try:
            user = await create_api_user(client)
            first, second = await new_session(client, user), await new_session(client, user)
            key = {"Idempotency-Key": "retry-me"}
            original = await send(client, user, first, {"input": "once"}, headers=key, stop_after=1)
            assert original.status == 200
            assert (await send(client, user, second, stop_after=1)).status == 200  # the user is at the limit now

            retry = await send(client, user, first, {"input": "once"}, headers=key, stop_after=1)
            assert retry.status == 200
            assert retry.events[0].data["turn"]["id"] == original.events[0].data["turn"]["id"]

            busy = await client.post(f"/v1/sessions/{first}/messages", json={"input": "again"}, headers=user.headers)
            assert busy.status_code == 409
            assert busy.json()["error"]["code"] == "turn_in_progress"

            third = await new_session(client, user)
            refused = await client.post(f"/v1/sessions/{third}/messages", json={"input": "x"}, headers=user.headers)
            assert refused.status_code == 429
            assert refused.json()["error"]["code"] == "too_many_concurrent_turns"
            await _cancel_all(client, user.headers, [first, second])
        finally:
            await sim.configure(tokens_per_second=0, output_tokens=None)
