"""The bytes on the wire: SSE framing, the SDK's event types, and OpenAI's response headers."""

from __future__ import annotations

import re

from tests.simulator.conftest import AUTH, Simulator
from tests.simulator.sse import assert_contiguous, validate_with_sdk

TEXT_ORDER = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
]
TEXT_END = [
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
]


async def test_text_stream_has_the_real_event_order_and_framing(simulator: Simulator) -> None:
    events = await simulator.stream_events({"model": "gpt-4.1-mini", "input": "Tell me something."})

    types = [event.type for event in events]
    deltas = [event for event in events if event.type == "response.output_text.delta"]
    assert types == TEXT_ORDER + ["response.output_text.delta"] * len(deltas) + TEXT_END
    # A Markdown answer of a few short paragraphs, lists, a table or code: tens of tokens, not thousands.
    assert 40 <= len(deltas) <= 200
    assert_contiguous(events)
    for event in events:
        validate_with_sdk(event)
    text = "".join(event.data["delta"] for event in deltas)
    assert events[-4].data["text"] == text
    assert events[-1].data["response"]["output"][0]["content"][0]["text"] == text
    assert all(event.data["logprobs"] == [] and event.data["obfuscation"] for event in deltas)


async def test_reasoning_model_streams_a_reasoning_item_before_the_message(simulator: Simulator) -> None:
    events = await simulator.stream_events({"model": "gpt-5-mini", "input": "Think first."})

    for event in events:
        validate_with_sdk(event)
    added = [event.data["item"]["type"] for event in events if event.type == "response.output_item.added"]
    assert added == ["reasoning", "message"]
    reasoning = events[2].data["item"]
    assert reasoning["id"].startswith("rs_")
    assert reasoning["summary"] == []
    usage = events[-1].data["response"]["usage"]
    deltas = sum(1 for event in events if event.type == "response.output_text.delta")
    assert usage["output_tokens_details"]["reasoning_tokens"] > 0
    assert usage["output_tokens"] == deltas + usage["output_tokens_details"]["reasoning_tokens"]


async def test_obfuscation_can_be_turned_off(simulator: Simulator) -> None:
    events = await simulator.stream_events(
        {"model": "gpt-4.1-mini", "input": "Hi", "stream_options": {"include_obfuscation": False}}
    )

    deltas = [event for event in events if event.type == "response.output_text.delta"]
    assert deltas
    assert all("obfuscation" not in event.data for event in deltas)


async def test_every_response_carries_openai_headers(simulator: Simulator) -> None:
    response = await simulator.http.post("/v1/responses", json={"model": "gpt-4.1-mini", "input": "Hi"}, headers=AUTH)

    assert response.status_code == 200
    headers = response.headers
    assert re.fullmatch(r"req_[0-9a-f]{32}", headers["x-request-id"])
    assert headers["openai-version"] == "2020-10-01"
    assert int(headers["openai-processing-ms"]) >= 0
    for kind in ("requests", "tokens"):
        assert int(headers[f"x-ratelimit-limit-{kind}"]) > 0
        assert int(headers[f"x-ratelimit-remaining-{kind}"]) >= 0
        assert re.fullmatch(r"(\d+m)?\d+(ms|s)", headers[f"x-ratelimit-reset-{kind}"])
    assert re.fullmatch(r"resp_[0-9a-f]{50}", response.json()["id"])


async def test_v1_routes_need_a_bearer_token(simulator: Simulator) -> None:
    missing = await simulator.http.post("/v1/conversations", json={})
    wrong_scheme = await simulator.http.get("/v1/models", headers={"Authorization": "Basic c2stdGVzdA=="})

    for response in (missing, wrong_scheme):
        assert response.status_code == 401
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["type"] == "invalid_request_error"
        assert "x-request-id" in response.headers


async def test_unknown_route_answers_in_openai_error_shape(simulator: Simulator) -> None:
    response = await simulator.http.get("/v1/nothing-here", headers=AUTH)

    assert response.status_code == 404
    assert response.json()["error"]["message"] == "Invalid URL (GET /v1/nothing-here)"
