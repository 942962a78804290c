"""Background responses: queued at once, polled, resumed from a sequence number, cancelled."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import openai
import pytest
from openai.types.responses import Response, ResponseStreamEvent

from app.simulator import create_simulator_app
from tests.servers import serve
from tests.simulator.conftest import AUTH, Simulator
from tests.simulator.sse import assert_contiguous, parse_frames, validate_with_sdk


async def _poll_until_done(sdk: openai.AsyncOpenAI, response_id: str) -> list[Response]:
    seen = []
    for _ in range(400):
        response = await sdk.responses.retrieve(response_id)
        seen.append(response)
        if response.status not in ("queued", "in_progress"):
            return seen
        await asyncio.sleep(0.025)
    raise AssertionError("background response never finished")


async def test_background_create_returns_queued_then_completes(sdk: openai.AsyncOpenAI, simulator: Simulator) -> None:
    await simulator.configure(tokens_per_second=25, output_tokens=25)

    created = await sdk.responses.create(model="gpt-4.1-mini", input="Work in the background", background=True)
    polled = await _poll_until_done(sdk, created.id)

    assert created.status == "queued"
    assert created.background is True
    assert created.output == []
    assert created.usage is None
    assert "in_progress" in {response.status for response in polled}
    final = polled[-1]
    assert final.status == "completed"
    assert final.completed_at is not None
    assert final.usage is not None
    assert final.usage.output_tokens == 25


async def test_background_stream_starts_queued(simulator: Simulator) -> None:
    events = await simulator.stream_events({"model": "gpt-5-mini", "input": "Hello", "background": True})

    assert [event.type for event in events[:3]] == ["response.created", "response.queued", "response.in_progress"]
    assert events[0].data["response"]["status"] == "queued"
    assert events[1].data["response"]["status"] == "queued"
    assert events[2].data["response"]["status"] == "in_progress"
    assert_contiguous(events)
    for event in events:
        validate_with_sdk(event)


async def test_resume_returns_exactly_the_events_after_the_cursor(
    sdk: openai.AsyncOpenAI, simulator: Simulator
) -> None:
    await simulator.configure(tokens_per_second=200, output_tokens=30)
    stream = await sdk.responses.create(model="gpt-4.1-mini", input="Resume me", background=True, stream=True)
    head = []
    async for event in stream:
        head.append(event)
        if len(head) == 6:
            break
    await stream.close()
    response_id = head[0].response.id

    resumed = await sdk.responses.retrieve(response_id, stream=True, starting_after=5)
    tail = [event async for event in resumed]
    replay = await sdk.responses.retrieve(response_id, stream=True, starting_after=-1)
    everything = [event async for event in replay]

    assert [event.sequence_number for event in tail] == list(range(6, 6 + len(tail)))
    assert tail[-1].type == "response.completed"
    assert [event.model_dump() for event in everything] == [event.model_dump() for event in head + tail]


async def test_resume_is_only_for_background_responses(sdk: openai.AsyncOpenAI, simulator: Simulator) -> None:
    response = await sdk.responses.create(model="gpt-4.1-mini", input="Plain")

    streamed = await simulator.http.get(f"/v1/responses/{response.id}", params={"stream": "true"}, headers=AUTH)
    unknown = await simulator.http.get("/v1/responses/resp_unknown", params={"stream": "true"}, headers=AUTH)

    assert streamed.status_code == 400
    assert unknown.status_code == 404
    assert unknown.json()["error"]["message"] == "Response with id 'resp_unknown' not found."


async def test_cancel_stops_a_background_response(sdk: openai.AsyncOpenAI, simulator: Simulator) -> None:
    await simulator.configure(tokens_per_second=20, output_tokens=200)
    created = await sdk.responses.create(model="gpt-4.1-mini", input="Cancel me", background=True, stream=True)
    first = [event async for event in _take(created, 8)]

    cancelled = await sdk.responses.cancel(first[0].response.id)
    again = await sdk.responses.cancel(first[0].response.id)
    rest = [event async for event in created]
    stored = await sdk.responses.retrieve(first[0].response.id)

    assert cancelled.status == "cancelled"
    assert again == cancelled
    assert stored.status == "cancelled"
    assert stored.usage is not None
    assert 0 < stored.usage.output_tokens < 200
    assert all(event.type == "response.output_text.delta" for event in rest)


async def test_only_background_responses_can_be_cancelled(sdk: openai.AsyncOpenAI) -> None:
    response = await sdk.responses.create(model="gpt-4.1-mini", input="Too late")

    with pytest.raises(openai.BadRequestError):
        await sdk.responses.cancel(response.id)
    with pytest.raises(openai.NotFoundError):
        await sdk.responses.cancel("resp_unknown")


async def test_background_raw_resume_framing(simulator: Simulator) -> None:
    await simulator.configure(output_tokens=10)
    created = await simulator.http.post(
        "/v1/responses", json={"model": "gpt-4.1-mini", "input": "x", "background": True}, headers=AUTH
    )
    response_id = created.json()["id"]
    for _ in range(200):
        if (await simulator.http.get(f"/v1/responses/{response_id}", headers=AUTH)).json()["status"] == "completed":
            break
        await asyncio.sleep(0.01)

    resumed = await simulator.http.get(
        f"/v1/responses/{response_id}", params={"stream": "true", "starting_after": "3"}, headers=AUTH
    )

    assert resumed.headers["content-type"] == "text/event-stream; charset=utf-8"
    events = parse_frames(resumed.content)
    assert_contiguous(events, first=4)
    assert events[-1].type == "response.completed"


async def test_a_running_plain_response_is_not_found_until_it_finished(
    sdk: openai.AsyncOpenAI, simulator: Simulator
) -> None:
    """Not in the background, a response is stored only once it has finished (the real service answers 404 while
    it runs): there is nothing to poll, re-attach to or cancel."""
    await simulator.configure(tokens_per_second=100, output_tokens=40)
    stream = await sdk.responses.create(model="gpt-4.1-mini", input="Not yet", stream=True)
    first = [event async for event in _take(stream, 4)]
    response_id = first[0].response.id  # type: ignore[union-attr]

    for call in (sdk.responses.retrieve, sdk.responses.cancel):
        with pytest.raises(openai.NotFoundError):
            await call(response_id)
    rest = [event async for event in stream]
    stored = await sdk.responses.retrieve(response_id)

    assert rest[-1].type == "response.completed"
    assert stored.status == "completed"


async def test_background_events_are_kept_for_the_retention_period() -> None:
    with serve(create_simulator_app(background_retention_s=0.3)) as url:
        async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="sk-test", max_retries=0) as sdk:
            created = await sdk.responses.create(model="gpt-4.1-mini", input="Keep me", background=True)
            final = (await _poll_until_done(sdk, created.id))[-1]
            replay = await sdk.responses.retrieve(created.id, stream=True, starting_after=-1)
            events = [event async for event in replay]
            await asyncio.sleep(0.6)

            with pytest.raises(openai.BadRequestError) as expired:
                await sdk.responses.retrieve(created.id, stream=True, starting_after=-1)
            kept = await sdk.responses.retrieve(created.id)

    assert final.status == "completed"
    assert events[-1].type == "response.completed"
    assert expired.value.param == "stream"
    assert kept.status == "completed"
    assert kept.output_text == final.output_text


async def test_an_organisation_with_zero_data_retention_refuses_background_mode() -> None:
    with serve(create_simulator_app(zero_data_retention=True)) as url:
        async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="sk-test", max_retries=0) as sdk:
            with pytest.raises(openai.BadRequestError) as refused:
                await sdk.responses.create(model="gpt-4.1-mini", input="Later", background=True, stream=True)
            plain = await sdk.responses.create(model="gpt-4.1-mini", input="Now")

    assert refused.value.param == "background"
    assert "background" in refused.value.message.lower()
    assert plain.status == "completed"


async def _take(stream: openai.AsyncStream[ResponseStreamEvent], count: int) -> AsyncIterator[ResponseStreamEvent]:
    taken = 0
    async for event in stream:
        yield event
        taken += 1
        if taken == count:
            return
