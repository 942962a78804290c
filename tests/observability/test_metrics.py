"""`/metrics` after a completed, a cancelled and a failed turn: each counter moves by exactly what happened."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import httpx
import pytest

from tests.conftest import ApiUser
from tests.observability.scrape import Scrape, scrape, scrape_until
from tests.turns.helpers import Event, Simulator, Stream, new_session, open_stream, send, sse_events

TURNS = "parley_turns_total"
TTFT_COUNT = "parley_turn_time_to_first_token_seconds_count"
DURATION_COUNT = "parley_turn_duration_seconds_count"
EVENTS = "parley_relayed_events_total"
TOKENS = "parley_tokens_total"
COST = "parley_cost_usd_total"
UPSTREAM_ERRORS = "parley_upstream_errors_total"
OPEN_STREAMS = "parley_open_streams"


def _upstream_events(stream: Stream) -> int:
    """Everything between turn.created and the terminal turn.* event came from the upstream."""
    return len([event for event in stream.events if not event.name.startswith("turn.")])


def _response_model(stream: Stream) -> str:
    completed = [e for e in stream.events if e.name in ("response.completed", "response.incomplete")]
    return str(completed[-1].data["response"]["model"])


async def test_metrics_are_prometheus_text_with_every_family(http: httpx.AsyncClient) -> None:
    response = await http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    families = Scrape.parse(response.text)
    for name in (OPEN_STREAMS, "parley_spool_depth", "process_cpu_seconds_total"):
        assert name in families.names()
    assert families.value("parley_spool_depth") == 0
    # A scraper asking for OpenMetrics gets it.
    openmetrics = await http.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
    assert openmetrics.text.rstrip().endswith("# EOF")
    # Not part of the API's schema.
    assert "/metrics" not in (await http.get("/openapi.json")).json()["paths"]


async def test_a_completed_turn(http: httpx.AsyncClient, person: ApiUser, simulator: Simulator) -> None:
    session_id = await new_session(http, person)
    before = await scrape(http)

    stream = await send(http, person, session_id)

    assert stream.names[-1] == "turn.completed"
    turn = stream.terminal.data["turn"]
    after = await scrape(http)
    assert after.value(TURNS, status="completed") - before.value(TURNS, status="completed") == 1
    assert after.value(TURNS) - before.value(TURNS) == 1
    assert after.value(TTFT_COUNT) - before.value(TTFT_COUNT) == 1
    assert after.value(DURATION_COUNT) - before.value(DURATION_COUNT) == 1
    duration_s = after.value("parley_turn_duration_seconds_sum") - before.value("parley_turn_duration_seconds_sum")
    assert duration_s == pytest.approx(turn["duration_ms"] / 1000)
    assert after.value(EVENTS) - before.value(EVENTS) == _upstream_events(stream)

    model = _response_model(stream)
    usage = turn["usage"]
    for kind, field in (
        ("input", "input_tokens"),
        ("output", "output_tokens"),
        ("cached_input", "cached_input_tokens"),
        ("reasoning", "reasoning_tokens"),
    ):
        moved = after.value(TOKENS, model=model, kind=kind) - before.value(TOKENS, model=model, kind=kind)
        assert moved == usage[field], kind
    assert usage["output_tokens"] > 0
    assert turn["cost_usd"] is not None
    cost = after.value(COST, model=model) - before.value(COST, model=model)
    assert cost == pytest.approx(float(Decimal(turn["cost_usd"])), rel=1e-9, abs=1e-12)
    assert cost > 0
    assert after.value(UPSTREAM_ERRORS) == before.value(UPSTREAM_ERRORS)
    # The simulator's x-ratelimit-remaining-* headers, as the latest seen.
    assert after.value("parley_upstream_ratelimit_remaining", resource="requests") == 9999
    assert after.value("parley_upstream_ratelimit_remaining", resource="tokens") == 9999850
    # No user, session or turn id in any label.
    for _, labels, _ in after.samples:
        for value in labels.values():
            assert person.id not in value
            assert session_id not in value
            assert turn["id"] not in value


async def test_a_cancelled_turn_and_the_open_streams_gauge(
    http: httpx.AsyncClient, person: ApiUser, simulator: Simulator
) -> None:
    await simulator.configure(tokens_per_second=40, output_tokens=200)
    session_id = await new_session(http, person)
    before = await scrape(http)
    assert before.value(OPEN_STREAMS) == 0

    async with open_stream(
        http, "POST", f"/v1/sessions/{session_id}/messages", json={"input": "talk slowly"}, headers=person.headers
    ) as (stream, source):
        cancelled: httpx.Response | None = None
        async for sse in sse_events(source):
            stream.events.append(Event.of(sse))
            if cancelled is None and stream.names.count("response.output_text.delta") == 3:
                during = await scrape(http)
                assert during.value(OPEN_STREAMS) == 1
                turn_id = stream.events[0].data["turn"]["id"]
                cancelled = await http.post(f"/v1/sessions/{session_id}/turns/{turn_id}/cancel", headers=person.headers)
    assert cancelled is not None
    assert cancelled.status_code == 200
    assert stream.names[-1] == "turn.cancelled"

    after = await scrape_until(http, lambda s: s.value(OPEN_STREAMS) == 0)
    assert after.value(TURNS, status="cancelled") - before.value(TURNS, status="cancelled") == 1
    assert after.value(TURNS) - before.value(TURNS) == 1
    assert after.value(TTFT_COUNT) - before.value(TTFT_COUNT) == 1
    assert after.value(DURATION_COUNT) - before.value(DURATION_COUNT) == 1
    assert after.value(EVENTS) - before.value(EVENTS) == _upstream_events(stream)
    # A cancel is the client's doing, not an upstream failure.
    assert after.value(UPSTREAM_ERRORS) == before.value(UPSTREAM_ERRORS)


async def test_an_upstream_error_before_the_first_byte(
    http: httpx.AsyncClient, person: ApiUser, simulator: Simulator
) -> None:
    session_id = await new_session(http, person)
    before = await scrape(http)
    await simulator.faults({"kind": "http_error", "status": 500})

    response = await http.post(f"/v1/sessions/{session_id}/messages", json={"input": "hello"}, headers=person.headers)

    assert response.status_code == 502, response.text
    code = response.json()["error"]["code"]
    after = await scrape_until(http, lambda s: s.value(TURNS, status="failed") > before.value(TURNS, status="failed"))
    moved = after.value(UPSTREAM_ERRORS, stage="open", status="500", code=code) - before.value(
        UPSTREAM_ERRORS, stage="open", status="500", code=code
    )
    assert moved == 1
    assert after.value(UPSTREAM_ERRORS) - before.value(UPSTREAM_ERRORS) == 1
    assert after.value(TURNS, status="failed") - before.value(TURNS, status="failed") == 1
    assert after.value(TURNS) - before.value(TURNS) == 1
    assert after.value(TTFT_COUNT) == before.value(TTFT_COUNT)
    assert after.value(DURATION_COUNT) - before.value(DURATION_COUNT) == 1
    assert after.value(EVENTS) == before.value(EVENTS)
    assert after.value(TOKENS) == before.value(TOKENS)
    assert after.value(COST) == before.value(COST)


async def test_a_stream_cut_by_the_upstream_counts_as_a_stream_error(
    http: httpx.AsyncClient, person: ApiUser, simulator: Simulator
) -> None:
    session_id = await new_session(http, person)
    before = await scrape(http)
    await simulator.faults({"kind": "cut", "after_events": 3})

    stream = await send(http, person, session_id)

    assert stream.names[-1].startswith("turn.")
    after = await scrape(http)
    moved = after.value(UPSTREAM_ERRORS, stage="stream", code="upstream_disconnected") - before.value(
        UPSTREAM_ERRORS, stage="stream", code="upstream_disconnected"
    )
    assert moved == 1
    assert after.value(UPSTREAM_ERRORS) - before.value(UPSTREAM_ERRORS) == 1
    assert after.value(TURNS) - before.value(TURNS) == 1


async def test_streams_being_read_at_once_are_counted(
    http: httpx.AsyncClient, person: ApiUser, simulator: Simulator
) -> None:
    await simulator.configure(tokens_per_second=40, output_tokens=60)
    sessions = [await new_session(http, person) for _ in range(2)]

    async def read(session_id: str, answering: asyncio.Event) -> Stream:
        async with open_stream(
            http, "POST", f"/v1/sessions/{session_id}/messages", json={"input": "hi"}, headers=person.headers
        ) as (stream, source):
            async for sse in sse_events(source):
                stream.events.append(Event.of(sse))
                if stream.names.count("response.output_text.delta") == 2:
                    answering.set()
        return stream

    answering = [asyncio.Event() for _ in sessions]
    readers = [asyncio.create_task(read(s, e)) for s, e in zip(sessions, answering, strict=True)]
    await asyncio.wait_for(asyncio.gather(*(e.wait() for e in answering)), timeout=10)
    during = await scrape(http)
    streams = await asyncio.gather(*readers)

    assert during.value(OPEN_STREAMS) == 2
    assert all(s.names[-1] == "turn.completed" for s in streams)
    await scrape_until(http, lambda s: s.value(OPEN_STREAMS) == 0)
