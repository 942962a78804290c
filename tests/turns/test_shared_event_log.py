"""Two replicas sharing Postgres and a real Redis (a `redis-server` of the test's own on a free port): any replica
serves a resume of a turn another one runs, from its Redis Stream; with Redis gone, turns go on and resumes
elsewhere get the stored turn. Replicas without Redis say in the log that their event logs are not shared."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass

import httpx
import pytest
from httpx_sse import EventSource

from app.simulator import create_simulator_app
from tests.conftest import RunningParley, create_api_user, run_parley
from tests.observability.scrape import scrape, scrape_until
from tests.servers import RedisServer, redis_server, serve
from tests.turns.helpers import (
    Event,
    Simulator,
    Stream,
    attach,
    new_session,
    open_stream,
    sse_events,
    turn_of,
    wait_for_status,
)


@pytest.fixture(scope="module")
def simulator_url() -> Iterator[str]:
    with serve(create_simulator_app()) as url:
        yield url


@contextmanager
def two_replicas(
    database_url: str, backend: str, simulator_url: str, redis_url: str
) -> Iterator[tuple[RunningParley, RunningParley]]:
    if backend != "postgres":
        pytest.skip("replicas share Postgres")
    shared = {
        "openai_api_key": "sk-test",
        "openai_base_url": f"{simulator_url}/v1",
        "default_prompt_id": "pmpt_parley_demo",
        "secret_key": "shared-secret-for-stream-tokens-between-replicas",
        "redis_url": redis_url,
    }
    with run_parley(database_url, backend, **shared) as a, run_parley(database_url, backend, **shared) as b:
        yield a, b


@dataclass
class Pair:
    a: httpx.AsyncClient
    b: httpx.AsyncClient
    sim: Simulator


@asynccontextmanager
async def clients(replicas: tuple[RunningParley, RunningParley], simulator_url: str) -> AsyncIterator[Pair]:
    a, b = replicas
    async with (
        httpx.AsyncClient(base_url=a.base_url, timeout=30) as ca,
        httpx.AsyncClient(base_url=b.base_url, timeout=30) as cb,
    ):
        sim = Simulator(ca, simulator_url)
        try:
            yield Pair(ca, cb, sim)
        finally:
            await sim.configure(tokens_per_second=0, output_tokens=None, first_token_delay_ms=0)


@pytest.fixture(scope="module")
def shared_redis() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


@pytest.fixture(scope="module")
def replicas(
    database_url: str, backend: str, simulator_url: str, shared_redis: RedisServer
) -> Iterator[tuple[RunningParley, RunningParley]]:
    with two_replicas(database_url, backend, simulator_url, shared_redis.url) as pair:
        yield pair


@pytest.fixture
async def pair(replicas: tuple[RunningParley, RunningParley], simulator_url: str) -> AsyncIterator[Pair]:
    async with clients(replicas, simulator_url) as running:
        yield running


class Reader:
    """An open stream read a few events at a time (httpx-sse's iterator can be taken only once)."""

    def __init__(self, stream: Stream, source: EventSource) -> None:
        self.stream = stream
        self._events = aiter(sse_events(source))

    async def take(self, count: int | None = None) -> Stream:
        """The next `count` events, or all of them to the end."""
        taken = 0
        async for sse in self._events:
            self.stream.events.append(Event.of(sse))
            taken += 1
            if count is not None and taken >= count:
                break
        return self.stream


def _triples(stream: Stream, after: int = 0) -> list[tuple[int, str, str]]:
    return [(e.id, e.name, e.raw) for e in stream.events if e.id > after]


async def test_a_resume_on_another_replica_replays_then_follows_the_turn_live(pair: Pair) -> None:
    await pair.sim.configure(tokens_per_second=50, output_tokens=150, first_token_delay_ms=0)
    user = await create_api_user(pair.a)
    session_id = await new_session(pair.a, user)
    async with open_stream(
        pair.a, "POST", f"/v1/sessions/{session_id}/messages", json={"input": "a long one"}, headers=user.headers
    ) as (on_a, source_a):
        reader_a = Reader(on_a, source_a)
        await reader_a.take(6)
        turn_id = on_a.events[0].data["turn"]["id"]
        headers = user.headers | {"Last-Event-ID": "3"}
        async with open_stream(pair.b, "GET", f"/v1/sessions/{session_id}/turns/{turn_id}/events", headers=headers) as (
            on_b,
            source_b,
        ):
            assert on_b.status == 200
            reader_b = Reader(on_b, source_b)
            await reader_b.take(6)
            # B has the events after 3, among them ones A relayed after B attached, while the turn still runs.
            assert (await turn_of(pair.b, user, session_id, turn_id))["status"] == "in_progress"
            await reader_b.take()
        await reader_a.take()

    assert on_a.names[-1] == "turn.completed"
    assert on_b.ids == list(range(4, on_a.terminal.id + 1))  # every event after 3, once, in order
    assert _triples(on_b) == _triples(on_a, after=3)
    stored = await turn_of(pair.b, user, session_id, turn_id)
    assert on_a.text == stored["output_text"] == on_b.terminal.data["turn"]["output_text"]
    # Once it has ended, any replica replays it whole, byte for byte as its own replica sent it.
    replay = await attach(pair.b, user, session_id, turn_id)
    assert _triples(replay) == _triples(on_a)
    nothing_left = await pair.b.get(
        f"/v1/sessions/{session_id}/turns/{turn_id}/events",
        headers=user.headers | {"Last-Event-ID": str(on_a.terminal.id)},
    )
    assert nothing_left.status_code == 204


async def test_redis_stopped_mid_turn(database_url: str, backend: str, simulator_url: str) -> None:
    """The turn finishes and is stored; its own replica's listeners see nothing of it; the other replica's
    resume goes on from the stored turn; the metrics say so."""
    with (
        redis_server() as own_redis,
        two_replicas(database_url, backend, simulator_url, own_redis.url) as replicas,
    ):
        async with clients(replicas, simulator_url) as pair:
            await pair.sim.configure(tokens_per_second=40, output_tokens=160, first_token_delay_ms=0)
            user = await create_api_user(pair.a)
            session_id = await new_session(pair.a, user)
            async with open_stream(
                pair.a, "POST", f"/v1/sessions/{session_id}/messages", json={"input": "x"}, headers=user.headers
            ) as (on_a, source_a):
                reader_a = Reader(on_a, source_a)
                await reader_a.take(5)
                turn_id = on_a.events[0].data["turn"]["id"]
                path = f"/v1/sessions/{session_id}/turns/{turn_id}/events"
                async with open_stream(pair.b, "GET", path, headers=user.headers | {"Last-Event-ID": "2"}) as (
                    on_b,
                    source_b,
                ):
                    reader_b = Reader(on_b, source_b)
                    await reader_b.take(3)  # following the stream live
                    own_redis.kill()
                    async with asyncio.timeout(30):
                        await reader_a.take()
                        await reader_b.take()

            # A's listener: every event, once, in order, to the end.
            assert on_a.ids == list(range(1, len(on_a.events) + 1))
            assert on_a.names[-1] == "turn.completed"
            stored = await wait_for_status(pair.a, user, session_id, turn_id)
            assert stored["status"] == "completed"
            assert stored["output_text"] == on_a.text
            assert len(stored["output_text"].split()) > 100
            assert stored["usage"]["output_tokens"] >= 160
            # B's listener: what Redis gave it, then the stored turn's terminal event; no duplicate, nothing out of
            # order, the same terminal event as A's.
            assert on_b.ids == sorted(set(on_b.ids))
            assert on_b.ids[:3] == [3, 4, 5]
            assert on_b.terminal.id == on_a.terminal.id
            assert on_b.terminal.name == "turn.completed"
            assert on_b.terminal.data["turn"]["output_text"] == stored["output_text"]
            # A resume on B now: the stored turn's terminal event.
            again = await attach(pair.b, user, session_id, turn_id, last_event_id=5)
            assert again.names == ["turn.completed"]
            assert again.terminal.id == on_a.terminal.id

            on_b_metrics = await scrape(pair.b)
            assert on_b_metrics.value("parley_redis_errors_total", op="read") >= 2
            assert on_b_metrics.value("parley_resume_fallbacks_total", reason="redis_error") >= 2
            assert on_b_metrics.value("parley_redis_available") == 0
            await scrape_until(
                pair.a,
                lambda scraped: (
                    scraped.value("parley_redis_errors_total", op="append") >= 1
                    and scraped.value("parley_redis_available") == 0
                ),
            )
            # A new turn runs and is stored while Redis is gone.
            await pair.sim.configure(tokens_per_second=0, output_tokens=20)
            async with open_stream(
                pair.a, "POST", f"/v1/sessions/{session_id}/messages", json={"input": "y"}, headers=user.headers
            ) as (later, source):
                async with asyncio.timeout(30):
                    await Reader(later, source).take()
            assert later.names[-1] == "turn.completed"


async def test_replicas_without_redis_say_that_their_logs_are_not_shared(
    database_url: str, backend: str, simulator_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    if backend != "postgres":
        pytest.skip("replicas share Postgres")
    settings = {
        "openai_api_key": "sk-test",
        "openai_base_url": f"{simulator_url}/v1",
        "turn_lease_s": 0.8,
    }
    with (
        caplog.at_level(logging.WARNING, logger="app.services.replicas"),
        run_parley(database_url, backend, **settings),
        run_parley(database_url, backend, **settings),
    ):
        deadline = time.monotonic() + 10
        while not any(r.message.startswith("replicas.event_log_not_shared") for r in caplog.records):
            assert time.monotonic() < deadline, "no warning"
            await asyncio.sleep(0.1)
    warning = next(r for r in caplog.records if r.message.startswith("replicas.event_log_not_shared"))
    assert "PARLEY_REDIS_URL" in warning.message
