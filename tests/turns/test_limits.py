"""Per-user limits at a turn's start, counted under the owner's lock: concurrent starts of one user on two
replicas are admitted exactly up to the limit, and a request that is refused by no limit of its own (a retry
of a started turn, a second send into a busy session) gets the answer it would get without limits."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.engine import build_engine
from app.db.models import Turn, User
from app.simulator import create_simulator_app
from tests.conftest import RunningParley, create_api_user, run_parley
from tests.servers import serve
from tests.turns.helpers import Simulator, conversation_of, new_session, send

LIMIT = 2


@pytest.fixture(scope="module")
def replicas(database_url: str, backend: str) -> Iterator[tuple[RunningParley, RunningParley, str]]:
    with serve(create_simulator_app()) as simulator_url:
        settings = {
            "rate_limit_concurrent_turns": LIMIT,
            "rate_limit_turns_per_minute": 1000,
            "openai_api_key": "sk-test",
            "allowed_models": ["gpt-4.1"],
            "allowed_prompts": ["pmpt_parley_demo"],
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


async def _wait_for_a_start_waiting_on_the_lock(engine: AsyncEngine) -> None:
    waiting = text(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%FOR NO KEY UPDATE%'"
    )
    for _ in range(200):
        async with engine.connect() as connection:
            if await connection.scalar(waiting):
                return
        await asyncio.sleep(0.05)
    raise AssertionError("no turn start waited for the owner's lock")


async def test_a_start_waiting_for_the_owners_lock_counts_what_the_holder_committed(
    replicas: tuple[RunningParley, RunningParley, str], database_url: str, backend: str
) -> None:
    """Another replica's start holds the owner's row while it inserts turns that bring the user to the limit:
    a start that arrives meanwhile waits for the lock, then counts those turns and is refused. (Counted in a
    snapshot older than the lock, or without waiting, it would be admitted over the limit.)"""
    if backend != "postgres":
        pytest.skip("SQLite runs one writing transaction at a time: there is no lock to wait for")
    a, _, _ = replicas
    engine = build_engine(database_url)
    try:
        async with httpx.AsyncClient(base_url=a.base_url, timeout=30) as client:
            user = await create_api_user(client)
            held = [await new_session(client, user) for _ in range(LIMIT)]
            waiting_session = await new_session(client, user)
            async with engine.connect() as holder:
                transaction = await holder.begin()
                # As another start takes it (FOR NO KEY UPDATE).
                await holder.execute(select(User.id).where(User.id == user.id).with_for_update(key_share=True))
                for session_id in held:
                    await holder.execute(
                        insert(Turn).values(
                            id=f"turn_{uuid.uuid4().hex}",
                            session_id=session_id,
                            user_id=user.id,
                            status="in_progress",
                            input="held",
                            request={},
                        )
                    )
                start = asyncio.create_task(
                    client.post(f"/v1/sessions/{waiting_session}/messages", json={"input": "x"}, headers=user.headers)
                )
                try:
                    await _wait_for_a_start_waiting_on_the_lock(engine)
                    assert not start.done()
                finally:
                    await transaction.commit()
                refused = await start
            assert refused.status_code == 429, refused.text
            assert refused.json()["error"]["code"] == "too_many_concurrent_turns"
            turns = await client.get(f"/v1/sessions/{waiting_session}/turns", headers=user.headers)
            assert turns.json()["data"] == []
            async with engine.begin() as connection:  # let the user's turns end (the held ones have no runner)
                await connection.execute(update(Turn).where(Turn.user_id == user.id).values(status="cancelled"))
    finally:
        await engine.dispose()


async def test_with_limits_counting_a_session_with_a_prompt_and_model_of_its_own_sends_them(
    replicas: tuple[RunningParley, RunningParley, str],
) -> None:
    # A counted start first tries the body built for a plain session; a session of its own is read, and the
    # turn started with the body built from it (on Postgres by a second statement).
    a, _, simulator_url = replicas
    async with httpx.AsyncClient(base_url=a.base_url, timeout=30) as client:
        sim = Simulator(client, simulator_url)
        user = await create_api_user(client)
        own = {"id": "pmpt_parley_demo", "version": "1", "variables": {"user_name": "Ada"}}
        session_id = await new_session(client, user, prompt=own, model="gpt-4.1")
        conversation = await conversation_of(client, user, session_id)
        await send(client, user, session_id, {"input": "a"})
        cleared = await client.patch(f"/v1/sessions/{session_id}", json={"prompt": None}, headers=user.headers)
        assert cleared.status_code == 200, cleared.text
        await send(client, user, session_id, {"input": "b"})

        first, second = await sim.response_calls(conversation)
        assert [first["body"]["conversation"], second["body"]["conversation"]] == [conversation] * 2
        assert (first["body"]["prompt"], first["body"]["model"]) == (own, "gpt-4.1")
        assert "prompt" not in second["body"]  # this deployment has no prompt of its own; the session's model
        assert second["body"]["model"] == "gpt-4.1"
        turns = (await client.get(f"/v1/sessions/{session_id}/turns", headers=user.headers)).json()["data"]
        assert [turn["status"] for turn in turns] == ["completed", "completed"]
