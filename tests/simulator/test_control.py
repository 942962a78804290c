"""Control routes: pacing and size, the request log, reset, and life under a path prefix."""

from __future__ import annotations

import asyncio
import time

import httpx
import openai
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from app.simulator import create_simulator_app
from tests.servers import serve
from tests.simulator.conftest import AUTH, Simulator
from tests.simulator.sse import parse_frames


async def test_output_tokens_sets_the_exact_number_of_deltas(simulator: Simulator) -> None:
    config = await simulator.configure(output_tokens=57)

    events = await simulator.stream_events({"model": "gpt-5-mini", "input": "Count for me"})

    assert config == {"tokens_per_second": 0.0, "first_token_delay_ms": 0.0, "output_tokens": 57}
    deltas = [event for event in events if event.type == "response.output_text.delta"]
    assert len(deltas) == 57
    usage = events[-1].data["response"]["usage"]
    assert usage["output_tokens"] - usage["output_tokens_details"]["reasoning_tokens"] == 57


async def test_config_updates_only_the_given_fields(simulator: Simulator) -> None:
    await simulator.configure(output_tokens=10, tokens_per_second=5)

    config = await simulator.configure(first_token_delay_ms=20)
    reset_size = await simulator.configure(output_tokens=None)
    refused = await simulator.http.post("/_control/config", json={"tokens_per_second": -1})

    assert config == {"tokens_per_second": 5.0, "first_token_delay_ms": 20.0, "output_tokens": 10}
    assert reset_size["output_tokens"] is None
    assert refused.status_code == 400


async def test_first_token_delay_holds_back_the_first_delta(simulator: Simulator) -> None:
    await simulator.configure(first_token_delay_ms=300, output_tokens=5)
    arrivals: dict[str, float] = {}
    started = time.monotonic()

    async with simulator.http.stream(
        "POST", "/v1/responses", json={"model": "gpt-4.1-mini", "input": "x", "stream": True}, headers=AUTH
    ) as response:
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                arrivals.setdefault(line[7:], time.monotonic() - started)

    assert arrivals["response.output_text.delta"] >= 0.3
    assert arrivals["response.created"] < arrivals["response.output_text.delta"]


async def test_tokens_per_second_paces_the_stream(simulator: Simulator) -> None:
    await simulator.configure(tokens_per_second=50, output_tokens=11)

    started = time.monotonic()
    events = await simulator.stream_events({"model": "gpt-4.1-mini", "input": "pace me"})

    assert sum(1 for event in events if event.type == "response.output_text.delta") == 11
    assert time.monotonic() - started >= 0.2  # ten gaps of 20 ms


async def test_requests_are_recorded_oldest_first_and_reset_clears_everything(
    sdk: openai.AsyncOpenAI, simulator: Simulator
) -> None:
    conversation = await sdk.conversations.create(metadata={"a": "1"})
    await sdk.conversations.items.list(conversation.id, limit=5)
    await simulator.configure(output_tokens=3)
    await simulator.faults({"kind": "http_error", "status": 500})

    recorded = await simulator.requests()
    await simulator.control("POST", "reset")

    assert recorded == [
        {"method": "POST", "path": "/v1/conversations", "query": {}, "body": {"metadata": {"a": "1"}}},
        {
            "method": "GET",
            "path": f"/v1/conversations/{conversation.id}/items",
            "query": {"limit": "5"},
            "body": None,
        },
    ]
    assert await simulator.requests() == []
    assert (await simulator.control("GET", "config"))["output_tokens"] is None
    response = await sdk.responses.create(model="gpt-4.1-mini", input="no fault left")
    assert response.status == "completed"
    missing = await simulator.http.get(f"/v1/conversations/{conversation.id}", headers=AUTH)
    assert missing.status_code == 404


async def test_mounted_under_a_prefix() -> None:
    host = Starlette(routes=[Mount("/simulator", app=create_simulator_app())])
    with serve(host) as url:
        base = f"{url}/simulator"
        async with (
            openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="sk-test", max_retries=0) as sdk,
            httpx.AsyncClient(base_url=base) as http,
        ):
            conversation = await sdk.conversations.create()
            stream = await sdk.responses.create(
                model="gpt-4.1-mini", input="Hi from a prefix", conversation=conversation.id, stream=True
            )
            events = [event async for event in stream]
            unknown = await http.get("/v1/nope", headers=AUTH)
            recorded = (await http.get("/_control/requests")).json()

    assert events[-1].type == "response.completed"
    assert [entry["path"] for entry in recorded] == ["/v1/conversations", "/v1/responses", "/v1/nope"]
    assert unknown.json()["error"]["message"] == "Invalid URL (GET /v1/nope)"


async def test_two_instances_share_nothing(simulator: Simulator) -> None:
    with serve(create_simulator_app()) as other_url:
        async with httpx.AsyncClient(base_url=other_url) as other:
            await other.post("/_control/config", json={"output_tokens": 4})
            await other.post("/_control/next", json={"faults": [{"kind": "http_error", "status": 503}]})
            created = await other.post("/v1/conversations", json={}, headers=AUTH)

    mine = await simulator.http.get(f"/v1/conversations/{created.json()['id']}", headers=AUTH)
    response = await simulator.http.post(
        "/v1/responses", json={"model": "gpt-4.1-mini", "input": "hello"}, headers=AUTH
    )
    assert mine.status_code == 404
    assert response.status_code == 200
    assert (await simulator.control("GET", "config"))["output_tokens"] is None


async def test_models_are_listed(sdk: openai.AsyncOpenAI) -> None:
    models = [model.id async for model in sdk.models.list()]
    one = await sdk.models.retrieve("gpt-5-mini")

    assert "gpt-5-mini" in models
    assert "gpt-4.1-mini" in models
    assert one.id == "gpt-5-mini"
    with pytest.raises(openai.NotFoundError) as caught:
        await sdk.models.retrieve("gpt-0")
    assert caught.value.code == "model_not_found"


async def test_client_leaving_a_stream_cancels_the_response(sdk: openai.AsyncOpenAI, simulator: Simulator) -> None:
    conversation = await sdk.conversations.create()
    await simulator.configure(tokens_per_second=100, output_tokens=300)
    received = b""

    async with simulator.http.stream(
        "POST",
        "/v1/responses",
        json={"model": "gpt-4.1-mini", "input": "Leave early", "stream": True, "conversation": conversation.id},
        headers=AUTH,
    ) as response:
        async for chunk in response.aiter_bytes():
            received += chunk
            if received.count(b"response.output_text.delta\n") >= 3:
                break
    response_id = parse_frames(received[: received.index(b"\n\n") + 2])[0].data["response"]["id"]

    # Not in the background: it stops with its client (which frees its conversation), and the real service
    # keeps nothing of it.
    await simulator.configure(tokens_per_second=0)
    follow_up = None
    for _ in range(200):
        try:
            follow_up = await sdk.responses.create(model="gpt-4.1-mini", input="again", conversation=conversation.id)
            break
        except openai.BadRequestError as error:
            locked = error.code
        assert locked == "conversation_locked"
        await asyncio.sleep(0.01)
    assert follow_up is not None
    assert follow_up.status == "completed"
    with pytest.raises(openai.NotFoundError):
        await sdk.responses.retrieve(response_id)
    items = [item async for item in sdk.conversations.items.list(conversation.id, order="asc")]
    assert [item.role for item in items if item.type == "message"] == ["user", "assistant"]  # type: ignore[union-attr]
