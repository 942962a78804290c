"""Two Parley processes on one database, as replicas behind a load balancer: the rules hold across them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import httpx
import pytest

from app.simulator import create_simulator_app
from tests.conftest import ApiUser, RunningParley, create_api_user, run_parley
from tests.observability.scrape import scrape_until
from tests.servers import serve
from tests.turns.helpers import Simulator, attach, collect, new_session, open_stream, send


@dataclass
class Pair:
    a: httpx.AsyncClient
    b: httpx.AsyncClient
    sim: Simulator


@pytest.fixture(scope="module")
def simulator_url() -> Iterator[str]:
    with serve(create_simulator_app()) as url:
        yield url


@pytest.fixture(scope="module")
def replicas(database_url: str, backend: str, simulator_url: str) -> Iterator[tuple[RunningParley, RunningParley]]:
    shared = {
        "openai_api_key": "sk-test",
        "openai_base_url": f"{simulator_url}/v1",
        "default_prompt_id": "pmpt_parley_demo",
        "secret_key": "shared-secret-for-stream-tokens-between-replicas",
        "runner_cancel_poll_interval_s": 0.1,
    }
    with run_parley(database_url, backend, **shared) as a, run_parley(database_url, backend, **shared) as b:
        yield a, b


@pytest.fixture
async def pair(replicas: tuple[RunningParley, RunningParley], simulator_url: str) -> AsyncIterator[Pair]:
    a, b = replicas
    async with (
        httpx.AsyncClient(base_url=a.base_url, timeout=30) as ca,
        httpx.AsyncClient(base_url=b.base_url, timeout=30) as cb,
    ):
        sim = Simulator(ca, simulator_url)
        await sim.configure(tokens_per_second=60, output_tokens=120, first_token_delay_ms=0)
        yield Pair(ca, cb, sim)
        await sim.configure(tokens_per_second=0, output_tokens=None)


async def test_one_turn_at_a_time_across_replicas(pair: Pair) -> None:
    user: ApiUser = await create_api_user(pair.a)
    session_id = await new_session(pair.a, user)
    head = await send(pair.a, user, session_id, stop_after=2)
    running = head.events[0].data["turn"]["id"]
    other = await pair.b.post(f"/v1/sessions/{session_id}/messages", json={"input": "x"}, headers=user.headers)
    assert other.status_code == 409
    assert other.json()["error"]["param"] == running
    await pair.b.post(f"/v1/sessions/{session_id}/turns/{running}/cancel", headers=user.headers)


async def test_cancel_through_another_replica(pair: Pair) -> None:
    user = await create_api_user(pair.a)
    session_id = await new_session(pair.a, user)
    head = await send(pair.a, user, session_id, stop_after=4)
    turn_id = head.events[0].data["turn"]["id"]
    response = await pair.b.post(f"/v1/sessions/{session_id}/turns/{turn_id}/cancel", headers=user.headers)
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    # The replica running the turn ended its stream with turn.cancelled.
    rest = await attach(pair.a, user, session_id, turn_id, last_event_id=4)
    assert rest.names[-1] == "turn.cancelled"


async def test_resume_through_another_replica_gets_the_final_state(pair: Pair) -> None:
    user = await create_api_user(pair.a)
    session_id = await new_session(pair.a, user)
    head = await send(pair.a, user, session_id, stop_after=3)
    turn_id = head.events[0].data["turn"]["id"]
    # Replica B has no event log for this turn: it waits for the stored outcome and sends the terminal event.
    resumed = await attach(pair.b, user, session_id, turn_id, last_event_id=3)
    assert resumed.status == 200
    assert resumed.names == ["turn.completed"]
    final = resumed.terminal.data["turn"]
    assert final["status"] == "completed"
    assert resumed.terminal.id > 3
    whole = await attach(pair.a, user, session_id, turn_id)
    assert whole.terminal.id == resumed.terminal.id
    assert whole.terminal.data["turn"]["output_text"] == final["output_text"]


async def test_stream_tokens_work_on_every_replica(pair: Pair) -> None:
    user = await create_api_user(pair.a)
    session_id = await new_session(pair.a, user)
    stream = await send(pair.a, user, session_id)
    url = stream.events[0].data["turn"]["stream_url"]
    path = url.split("/v1/", 1)[1]
    response = await pair.b.get(f"/v1/{path}")
    assert response.status_code == 200
    assert "turn.completed" in response.text


async def test_revoking_a_key_on_one_replica_ends_its_stream_tokens_and_streams_on_another(
    pair: Pair, replicas: tuple[RunningParley, RunningParley], backend: str
) -> None:
    """Told over Postgres LISTEN/NOTIFY: at once, however long replica B would trust its cache of the key."""
    if backend != "postgres":
        pytest.skip("replicas hear of revokes over Postgres LISTEN/NOTIFY; SQLite is one process")
    admin = replicas[0].admin_headers
    await scrape_until(pair.b, lambda scraped: scraped.value("parley_auth_revocations_listening") == 1)
    await pair.sim.configure(tokens_per_second=20, output_tokens=400, first_token_delay_ms=0)
    user = await create_api_user(pair.a)
    other = await pair.a.post(f"/v1/admin/users/{user.id}/keys", json={}, headers=admin)
    other_headers = {"Authorization": f"Bearer {other.json()['key']}"}
    session_id = await new_session(pair.a, user)
    head = await send(pair.a, user, session_id, stop_after=2)
    turn = head.events[0].data["turn"]
    on_b = f"/v1/{turn['stream_url'].split('/v1/', 1)[1]}"
    assert (await pair.b.get(f"/v1/sessions/{session_id}", headers=user.headers)).status_code == 200  # cached on B

    async with open_stream(pair.b, "GET", on_b) as (stream, source):
        assert stream.status == 200
        keys = (await pair.a.get(f"/v1/admin/users/{user.id}/keys", headers=admin)).json()["data"]
        [key] = [k for k in keys if user.key.startswith(k["prefix"])]
        assert (await pair.a.post(f"/v1/admin/keys/{key['id']}/revoke", headers=admin)).status_code == 200
        async with asyncio.timeout(5):
            await collect(source, stream)  # B ends it, though its turn runs on
    assert "turn.completed" not in stream.names
    assert (await pair.b.get(on_b)).status_code == 401
    assert (await pair.b.get(f"/v1/sessions/{session_id}", headers=user.headers)).status_code == 401

    cancelled = await pair.b.post(f"/v1/sessions/{session_id}/turns/{turn['id']}/cancel", headers=other_headers)
    assert cancelled.json()["status"] == "cancelled"
