"""Faults queued with `POST /_control/next`: each shows up on the wire exactly as described."""

from __future__ import annotations

import asyncio
import time

import httpx
import openai
import pytest
from openai.types.responses import Response, ResponseStreamEvent

from tests.simulator.conftest import AUTH, Simulator
from tests.simulator.sse import assert_contiguous, parse_frames, validate_with_sdk

BODY = {"model": "gpt-4.1-mini", "input": "Hello fault"}


async def _wait_for_status(sdk: openai.AsyncOpenAI, response_id: str, status: str) -> Response:
    for _ in range(500):
        response = await sdk.responses.retrieve(response_id)
        if response.status == status:
            return response
        await asyncio.sleep(0.01)
    raise AssertionError(f"{response_id} never reached {status}")


async def test_http_errors_use_openai_bodies_and_retry_after(sdk: openai.AsyncOpenAI, simulator: Simulator) -> None:
    await simulator.faults(
        {"kind": "http_error", "status": 429, "retry_after": 2},
        {"kind": "http_error", "status": 500},
        {"kind": "http_error", "status": 503},
        {"kind": "http_error", "status": 400, "code": "context_length_exceeded"},
    )

    with pytest.raises(openai.RateLimitError) as rate_limited:
        await sdk.responses.create(**BODY)  # type: ignore[call-overload]
    with pytest.raises(openai.InternalServerError) as server_error:
        await sdk.responses.create(**BODY)  # type: ignore[call-overload]
    with pytest.raises(openai.InternalServerError) as overloaded:
        await sdk.responses.create(**BODY)  # type: ignore[call-overload]
    with pytest.raises(openai.BadRequestError) as bad_request:
        await sdk.responses.create(**BODY)  # type: ignore[call-overload]
    afterwards = await sdk.responses.create(**BODY)  # type: ignore[call-overload]

    assert rate_limited.value.code == "rate_limit_exceeded"
    assert rate_limited.value.response.headers["retry-after"] == "2"
    assert (server_error.value.status_code, server_error.value.code) == (500, "server_error")
    assert (overloaded.value.status_code, overloaded.value.code) == (503, "overloaded")
    assert bad_request.value.code == "context_length_exceeded"
    assert bad_request.value.type == "invalid_request_error"
    assert afterwards.status == "completed"


async def test_cut_of_a_plain_stream_loses_the_response(sdk: openai.AsyncOpenAI, simulator: Simulator) -> None:
    """As on the real service: a response not in the background lives as long as its connection."""
    conversation = await sdk.conversations.create()
    await simulator.configure(output_tokens=30)
    await simulator.faults({"kind": "cut", "after_events": 5})
    received = bytearray()

    with pytest.raises(httpx.RemoteProtocolError):
        await _read_stream(simulator, {**BODY, "stream": True, "conversation": conversation.id}, into=received)

    events = parse_frames(bytes(received))
    assert len(events) == 5
    assert_contiguous(events)
    response_id = events[0].data["response"]["id"]
    for query in ({}, {"stream": "true"}):
        gone = await simulator.http.get(f"/v1/responses/{response_id}", params=query, headers=AUTH)
        assert gone.status_code == 404, gone.text
        assert gone.json()["error"]["message"] == f"Response with id '{response_id}' not found."
    assert [item async for item in sdk.conversations.items.list(conversation.id)] == []
    follow_up = await sdk.responses.create(**BODY, conversation=conversation.id)  # type: ignore[call-overload]
    assert follow_up.status == "completed"


async def test_cut_of_a_background_stream_leaves_the_response_running(
    sdk: openai.AsyncOpenAI, simulator: Simulator
) -> None:
    conversation = await sdk.conversations.create()
    await simulator.configure(output_tokens=30)
    await simulator.faults({"kind": "cut", "after_events": 5})
    received = bytearray()

    with pytest.raises(httpx.RemoteProtocolError):
        await _read_stream(
            simulator, {**BODY, "stream": True, "background": True, "conversation": conversation.id}, into=received
        )

    head = parse_frames(bytes(received))
    assert len(head) == 5
    response_id = head[0].data["response"]["id"]
    final = await _wait_for_status(sdk, response_id, "completed")
    assert final.usage is not None
    assert final.usage.output_tokens == 30
    items = [item async for item in sdk.conversations.items.list(conversation.id)]
    assert len(items) == 2
    resumed = await simulator.http.get(
        f"/v1/responses/{response_id}", params={"stream": "true", "starting_after": "4"}, headers=AUTH
    )
    tail = parse_frames(resumed.content)
    assert_contiguous(head + tail)
    assert tail[-1].type == "response.completed"


async def test_cut_of_a_non_streamed_call_is_a_connection_error(sdk: openai.AsyncOpenAI, simulator: Simulator) -> None:
    await simulator.faults({"kind": "cut", "after_events": 3})

    with pytest.raises(openai.APIConnectionError):
        await sdk.responses.create(**BODY)  # type: ignore[call-overload]
    assert await sdk.responses.create(**BODY)  # type: ignore[call-overload]


async def test_stall_pauses_then_finishes_normally(simulator: Simulator) -> None:
    await simulator.faults({"kind": "stall", "after_events": 3, "seconds": 0.3})

    started = time.monotonic()
    events = await simulator.stream_events(BODY)

    assert time.monotonic() - started >= 0.3
    assert events[-1].type == "response.completed"
    assert_contiguous(events)


async def test_error_event_is_nested_and_followed_by_response_failed(
    sdk: openai.AsyncOpenAI, simulator: Simulator
) -> None:
    await simulator.faults({"kind": "error_event", "after_events": 4, "code": "server_error"})

    events = await simulator.stream_events(BODY)

    assert [event.type for event in events[-2:]] == ["error", "response.failed"]
    assert len(events) == 6
    assert_contiguous(events)
    for event in events:
        validate_with_sdk(event)
    error = events[-2].data
    assert error["error"]["code"] == "server_error"
    assert error["error"]["param"] is None
    assert "code" not in error
    assert "message" not in error
    failed = events[-1].data["response"]
    assert failed["status"] == "failed"
    assert failed["error"] == {"code": "server_error", "message": error["error"]["message"]}
    stored = await sdk.responses.retrieve(failed["id"])
    assert stored.status == "failed"
    assert stored.error is not None
    assert stored.error.code == "server_error"


async def test_sdk_raises_on_the_error_event(sdk: openai.AsyncOpenAI, simulator: Simulator) -> None:
    await simulator.faults({"kind": "error_event", "after_events": 2, "code": "insufficient_quota"})
    stream = await sdk.responses.create(**BODY, stream=True)  # type: ignore[call-overload]
    seen: list[str] = []

    with pytest.raises(openai.APIError) as caught:
        await _collect_types(stream, into=seen)

    assert seen == ["response.created", "response.in_progress"]
    assert caught.value.body == {
        "type": "insufficient_quota",
        "code": "insufficient_quota",
        "message": "You exceeded your current quota, please check your plan and billing details.",
        "param": None,
    }


async def test_error_event_on_a_non_streamed_call_is_an_http_error(
    sdk: openai.AsyncOpenAI, simulator: Simulator
) -> None:
    await simulator.faults({"kind": "error_event", "after_events": 4, "code": "server_error"})

    with pytest.raises(openai.InternalServerError) as caught:
        await sdk.responses.create(**BODY)  # type: ignore[call-overload]
    assert caught.value.code == "server_error"


async def test_incomplete_ends_with_usage_so_far(sdk: openai.AsyncOpenAI, simulator: Simulator) -> None:
    await simulator.faults({"kind": "incomplete", "after_events": 8})

    events = await simulator.stream_events(BODY)

    for event in events:
        validate_with_sdk(event)
    assert len(events) == 9
    assert events[-1].type == "response.incomplete"
    response = events[-1].data["response"]
    assert response["incomplete_details"] == {"reason": "max_output_tokens"}
    deltas = [event.data["delta"] for event in events if event.type == "response.output_text.delta"]
    assert response["usage"]["output_tokens"] == len(deltas) == 4
    assert response["output"][0]["content"][0]["text"] == "".join(deltas)
    assert (await sdk.responses.retrieve(response["id"])).status == "incomplete"


async def test_conversation_locked_fault(sdk: openai.AsyncOpenAI, simulator: Simulator) -> None:
    await simulator.faults({"kind": "conversation_locked"})

    with pytest.raises(openai.BadRequestError) as caught:
        await sdk.responses.create(**BODY)  # type: ignore[call-overload]
    assert caught.value.code == "conversation_locked"


async def test_replay_sends_exactly_the_recorded_bytes(simulator: Simulator) -> None:
    recorded = 'event: response.created\ndata: {"type":"response.created","sequence_number":0}\n\nevent: weird\n'
    await simulator.faults({"kind": "replay", "sse": recorded})

    response = await simulator.http.post("/v1/responses", json=BODY, headers=AUTH)

    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert response.content == recorded.encode()


@pytest.mark.parametrize(
    "fault",
    [
        {"kind": "explode"},
        {"kind": "cut"},
        {"kind": "http_error", "status": 200},
        {"kind": "stall", "after_events": -1, "seconds": 1},
        {"kind": "cut", "after_events": 1, "extra": True},
    ],
)
async def test_invalid_fault_specs_are_refused(simulator: Simulator, fault: dict[str, object]) -> None:
    response = await simulator.http.post("/_control/next", json={"faults": [fault]})

    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert (await simulator.http.post("/v1/responses", json=BODY, headers=AUTH)).status_code == 200


async def _read_stream(simulator: Simulator, body: dict[str, object], *, into: bytearray) -> None:
    async with simulator.http.stream("POST", "/v1/responses", json=body, headers=AUTH) as response:
        async for chunk in response.aiter_bytes():
            into += chunk


async def _collect_types(stream: openai.AsyncStream[ResponseStreamEvent], *, into: list[str]) -> None:
    async for event in stream:
        into.append(event.type)
