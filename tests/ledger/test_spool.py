"""Nothing lost: when the database goes away in the middle of a turn, the turn still ends for its listeners,
its final write waits in the local spool, and lands exactly once when the database is back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from app.db.base import utcnow
from app.db.engine import build_engine, build_sessionmaker
from app.db.models import Message, Turn, UsageRecord
from app.services.pricing import Pricer
from app.services.spool import Spool
from app.services.turn_store import SqlTurnStore
from app.streaming.outcome import TurnOutcome
from app.streaming.turn_runner import TurnJob
from app.streaming.turn_state import ResponseOutcome
from tests.conftest import create_api_user, run_parley
from tests.databases import postgres_database
from tests.tcp_proxy import FaultProxy
from tests.turns.helpers import Event, Stream, new_session, open_stream, simulator_for, sse_events


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    async with postgres_database() as url:
        yield url


async def _count(url: str, model: type, **where: str) -> int:
    engine = build_engine(url)
    try:
        async with engine.connect() as connection:
            statement = select(func.count()).select_from(model)
            for column, value in where.items():
                statement = statement.where(getattr(model, column) == value)
            return int(await connection.scalar(statement) or 0)
    finally:
        await engine.dispose()


async def test_database_dies_mid_turn_and_the_ledger_still_gets_exactly_one_row(
    postgres_url: str, tmp_path: Path
) -> None:
    target = make_url(postgres_url)
    proxy = FaultProxy(target.host or "127.0.0.1", target.port or 5432)
    proxy.start()
    through_proxy = target.set(port=proxy.port).render_as_string(hide_password=False)
    spool_dir = tmp_path / "spool"
    try:
        with run_parley(
            through_proxy, "postgres", spool_dir=spool_dir, turn_lease_s=1.2, database_pool_timeout_s=2.0
        ) as parley:
            async with httpx.AsyncClient(base_url=parley.base_url, timeout=30) as client:
                user = await create_api_user(client)
                session_id = await new_session(client, user)
                sim = simulator_for(parley, client)
                await sim.configure(tokens_per_second=100, output_tokens=80)
                try:
                    async with open_stream(
                        client,
                        "POST",
                        f"/v1/sessions/{session_id}/messages",
                        json={"input": "keep going"},
                        headers=user.headers,
                    ) as (stream, source):
                        assert stream.status == 200
                        async for sse in sse_events(source):
                            stream.events.append(Event.of(sse))
                            if stream.names.count("response.output_text.delta") == 5:
                                proxy.cut()  # Postgres is gone for this Parley
                finally:
                    await sim.configure(tokens_per_second=0, output_tokens=None)

                _assert_whole(stream)
                turn_id = stream.events[0].data["turn"]["id"]
                # The final write is on disk, not in the database.
                assert (spool_dir / "final-writes.jsonl").is_file()
                assert await _count(postgres_url, UsageRecord, turn_id=turn_id) == 0

                proxy.restore()
                for _ in range(100):
                    if not (spool_dir / "final-writes.jsonl").exists():
                        break
                    await asyncio.sleep(0.1)
                assert not (spool_dir / "final-writes.jsonl").exists()
                assert await _count(postgres_url, UsageRecord, turn_id=turn_id) == 1
                assert await _count(postgres_url, Message, turn_id=turn_id) == 2  # user + assistant
                stored = (await client.get(f"/v1/sessions/{session_id}/turns/{turn_id}", headers=user.headers)).json()
                assert stored["status"] == "completed"
                assert stored["output_text"] == stream.terminal.data["turn"]["output_text"]
                assert stored["cost_usd"] == stream.terminal.data["turn"]["cost_usd"]
                session = (await client.get(f"/v1/sessions/{session_id}", headers=user.headers)).json()
                assert session["total_cost_usd"] == stored["cost_usd"]
    finally:
        proxy.stop()
    # Nothing is doubled by a second replay of the same write either.
    assert await _count(postgres_url, Turn, id=turn_id) == 1


def _assert_whole(stream: Stream) -> None:
    assert stream.names[-1] == "turn.completed"
    assert stream.ids == list(range(1, len(stream.events) + 1))
    final = stream.terminal.data["turn"]
    assert final["output_text"] == stream.text
    assert final["usage"] is not None


async def test_replaying_a_write_twice_does_not_double_it(postgres_url: str, tmp_path: Path) -> None:
    """F-19: the spool replay and the normal path both land the same write: still one row."""
    with run_parley(postgres_url, "postgres") as parley:
        async with httpx.AsyncClient(base_url=parley.base_url, timeout=30) as client:
            user = await create_api_user(client)
            session_id = await new_session(client, user)
            sim = simulator_for(parley, client)
            await sim.configure(tokens_per_second=20, output_tokens=200)
            try:
                async with open_stream(
                    client, "POST", f"/v1/sessions/{session_id}/messages", json={"input": "x"}, headers=user.headers
                ) as (stream, source):
                    async for sse in sse_events(source):
                        stream.events.append(Event.of(sse))
                        break
                turn_id = stream.events[0].data["turn"]["id"]
                engine = build_engine(postgres_url)
                store = SqlTurnStore(build_sessionmaker(engine), pricer=Pricer(), spool=Spool(tmp_path))
                job = TurnJob(
                    turn_id=turn_id,
                    session_id=session_id,
                    user_id=user.id,
                    upstream_body={"model": "gpt-4.1"},
                    created_turn={},
                    stream_url="",
                )
                outcome = TurnOutcome(
                    status="completed",
                    output_text="done",
                    response_ids=["resp_dupe"],
                    responses=[
                        ResponseOutcome(
                            response_id="resp_dupe",
                            status="completed",
                            model="gpt-4.1",
                            usage={"input_tokens": 10, "output_tokens": 5, "total_tokens": 15},
                        )
                    ],
                )
                plan = store.plan_final_write(job, outcome, utcnow())
                await store.apply(plan)
                await store.apply(plan)
                await engine.dispose()
            finally:
                await client.post(f"/v1/sessions/{session_id}/turns/{turn_id}/cancel", headers=user.headers)
                await sim.configure(tokens_per_second=0, output_tokens=None)
    assert await _count(postgres_url, UsageRecord, response_id="resp_dupe") == 1
    assert await _count(postgres_url, Message, turn_id=turn_id, role="assistant") == 1


async def test_database_down_before_a_send_is_503_and_nothing_goes_upstream(postgres_url: str) -> None:
    """F-17: fail closed, with Retry-After, never a 500; and the next request after it is back succeeds."""
    target = make_url(postgres_url)
    proxy = FaultProxy(target.host or "127.0.0.1", target.port or 5432)
    proxy.start()
    through_proxy = target.set(port=proxy.port).render_as_string(hide_password=False)
    try:
        with run_parley(through_proxy, "postgres", database_pool_timeout_s=2.0) as parley:
            async with httpx.AsyncClient(base_url=parley.base_url, timeout=30) as client:
                user = await create_api_user(client)
                session_id = await new_session(client, user)
                sim = simulator_for(parley, client)
                before = len(await sim.requests())
                proxy.cut()
                for request in (
                    client.get("/v1/sessions", headers=user.headers),
                    client.post(f"/v1/sessions/{session_id}/messages", json={"input": "x"}, headers=user.headers),
                ):
                    response = await request
                    assert response.status_code == 503, response.text
                    assert response.headers["retry-after"] == "2"
                    assert response.json()["error"]["code"] == "database_unavailable"
                assert len(await sim.requests()) == before
                proxy.restore()
                assert (await client.get("/v1/sessions", headers=user.headers)).status_code == 200
    finally:
        proxy.stop()
