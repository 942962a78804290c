"""`POST /v1/responses` through the official SDK: output, usage, conversations, prompts and validation."""

from __future__ import annotations

import asyncio
import re

import openai
import pytest
from openai.types.responses import Response, ResponseFunctionToolCall

from app.simulator import DEMO_PROMPT_ID
from app.simulator.generation import count_tokens
from app.simulator.items import count_item_tokens
from tests.simulator.conftest import AUTH, Simulator
from tests.simulator.sse import assert_contiguous, validate_with_sdk

INSTRUCTIONS = "You are a test assistant."
WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather for a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city", "days"],
        "additionalProperties": False,
    },
    "strict": True,
}


async def test_non_streamed_response_is_a_complete_response_object(sdk: openai.AsyncOpenAI) -> None:
    response = await sdk.responses.create(model="gpt-4.1-mini", input="What is Parley?", metadata={"k": "v"})

    assert response.status == "completed"
    assert response.model == "gpt-4.1-mini-2025-04-14"
    assert "What is Parley" in response.output_text
    assert response.completed_at is not None
    assert response.service_tier == "default"
    assert response.metadata == {"k": "v"}
    assert response.store is True
    assert response.usage is not None
    assert response.usage.output_tokens == len(re.findall(r"\w+|[^\w\s]", response.output_text))
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens
    extra = response.model_extra or {}
    assert extra["billing"] == {"payer": "developer"}


async def test_same_input_gives_the_same_text(sdk: openai.AsyncOpenAI) -> None:
    first = await sdk.responses.create(model="gpt-4.1-mini", input="Repeat after me")
    second = await sdk.responses.create(model="gpt-4.1-mini", input="Repeat after me")

    assert first.output_text == second.output_text
    assert first.id != second.id


async def test_streamed_response_through_the_sdk(sdk: openai.AsyncOpenAI) -> None:
    stream = await sdk.responses.create(model="gpt-4.1-mini", input="Stream this", stream=True)
    events = [event async for event in stream]

    assert events[0].type == "response.created"
    assert events[0].response.status == "in_progress"
    assert events[0].response.service_tier == "auto"
    final = events[-1]
    assert final.type == "response.completed"
    text = "".join(event.delta for event in events if event.type == "response.output_text.delta")
    assert final.response.output_text == text
    stored = await sdk.responses.retrieve(final.response.id)
    assert stored.output_text == text
    assert stored.status == "completed"


async def test_conversation_grows_and_second_turn_reports_cached_tokens(sdk: openai.AsyncOpenAI) -> None:
    conversation = await sdk.conversations.create()
    first = await sdk.responses.create(
        model="gpt-4.1-mini", instructions=INSTRUCTIONS, input="First question", conversation=conversation.id
    )
    items = [item async for item in sdk.conversations.items.list(conversation.id, order="asc")]
    second = await sdk.responses.create(
        model="gpt-4.1-mini", instructions=INSTRUCTIONS, input="Second question", conversation={"id": conversation.id}
    )

    assert [item.type for item in items] == ["message", "message"]
    assert [getattr(item, "role", None) for item in items] == ["user", "assistant"]
    assert items[1].id == first.output[0].id
    assert first.conversation is not None
    assert first.conversation.id == conversation.id
    assert first.usage is not None
    assert second.usage is not None
    assert first.usage.input_tokens_details.cached_tokens == 0
    assert second.usage.input_tokens_details.cached_tokens == first.usage.input_tokens
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
    after = [item async for item in sdk.conversations.items.list(conversation.id)]
    assert len(after) == 4


async def test_prompt_variables_fill_the_instructions(sdk: openai.AsyncOpenAI) -> None:
    response = await sdk.responses.create(
        prompt={"id": DEMO_PROMPT_ID, "version": "1", "variables": {"user_name": "Ada"}}, input="Hi"
    )
    latest = await sdk.responses.create(prompt={"id": DEMO_PROMPT_ID}, input="Hi")

    stored = await sdk.responses.retrieve(response.id)
    assert stored.model == "gpt-5-mini-2025-08-07"
    assert stored.prompt is not None
    assert stored.prompt.version == "1"
    assert isinstance(stored.instructions, list)
    assert "Address the user as Ada." in str(stored.instructions[0].model_dump()["content"])
    assert latest.prompt is not None
    assert latest.prompt.version == "2"
    assert "Address the user as friend" in str(latest.model_dump()["instructions"])


async def test_unknown_prompt_or_version_is_not_found(sdk: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        await sdk.responses.create(prompt={"id": "pmpt_nope"}, input="Hi")
    with pytest.raises(openai.NotFoundError) as caught:
        await sdk.responses.create(prompt={"id": DEMO_PROMPT_ID, "version": "99"}, input="Hi")
    assert caught.value.param == "prompt.version"


async def test_unknown_conversation_is_not_found(sdk: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        await sdk.responses.create(model="gpt-4.1-mini", input="Hi", conversation="conv_unknown")
    assert caught.value.param == "conversation"


async def test_invalid_combinations_are_refused(sdk: openai.AsyncOpenAI, simulator: Simulator) -> None:
    conversation = await sdk.conversations.create()
    previous = await sdk.responses.create(model="gpt-4.1-mini", input="Hi")

    with pytest.raises(openai.BadRequestError) as both:
        await sdk.responses.create(
            model="gpt-4.1-mini", input="Hi", conversation=conversation.id, previous_response_id=previous.id
        )
    with pytest.raises(openai.BadRequestError) as unstored_background:
        await sdk.responses.create(model="gpt-4.1-mini", input="Hi", background=True, store=False)
    with pytest.raises(openai.BadRequestError) as no_model:
        await sdk.responses.create(input="Hi")  # type: ignore[call-overload]
    with pytest.raises(openai.BadRequestError) as nested_tool:
        await sdk.responses.create(
            model="gpt-4.1-mini",
            input="Hi",
            tools=[{"type": "function", "function": {"name": "f"}}],  # type: ignore[list-item]
        )
    bad_json = await simulator.http.post(
        "/v1/responses", content=b"{not json", headers={**AUTH, "content-type": "application/json"}
    )

    assert both.value.code == "mutually_exclusive_parameters"
    assert unstored_background.value.param == "background"
    assert no_model.value.code == "missing_required_parameter"
    assert nested_tool.value.param == "tools[0].name"
    assert bad_json.status_code == 400
    assert "could not parse the JSON body" in bad_json.json()["error"]["message"]


async def test_concurrent_responses_on_one_conversation_are_locked(
    sdk: openai.AsyncOpenAI, simulator: Simulator
) -> None:
    conversation = await sdk.conversations.create()
    await simulator.configure(tokens_per_second=200, output_tokens=40)
    first = await sdk.responses.create(
        model="gpt-4.1-mini", input="Slow one", conversation=conversation.id, stream=True
    )
    first_events = first.__aiter__()
    await first_events.__anext__()

    with pytest.raises(openai.BadRequestError) as caught:
        await sdk.responses.create(model="gpt-4.1-mini", input="Too soon", conversation=conversation.id)
    assert caught.value.body == {
        "message": "Another process is currently operating on this conversation. Please retry in a few seconds.",
        "type": "invalid_request_error",
        "param": "conversation",
        "code": "conversation_locked",
    }
    async for _ in first_events:
        pass
    after = await sdk.responses.create(model="gpt-4.1-mini", input="Now it's free", conversation=conversation.id)
    assert after.status == "completed"


async def test_previous_response_id_carries_the_history(sdk: openai.AsyncOpenAI) -> None:
    first = await sdk.responses.create(model="gpt-4.1-mini", instructions=INSTRUCTIONS, input="One")
    second = await sdk.responses.create(
        model="gpt-4.1-mini", instructions=INSTRUCTIONS, input="Two", previous_response_id=first.id
    )

    assert first.usage is not None
    assert second.usage is not None
    assert second.previous_response_id == first.id
    assert second.usage.input_tokens_details.cached_tokens == first.usage.input_tokens
    with pytest.raises(openai.BadRequestError) as caught:
        await sdk.responses.create(model="gpt-4.1-mini", input="x", previous_response_id="resp_missing")
    assert caught.value.code == "previous_response_not_found"


async def test_store_false_is_not_retrievable(sdk: openai.AsyncOpenAI) -> None:
    response = await sdk.responses.create(model="gpt-4.1-mini", input="Forget me", store=False)

    assert response.store is False
    with pytest.raises(openai.NotFoundError):
        await sdk.responses.retrieve(response.id)


async def test_max_output_tokens_ends_incomplete(sdk: openai.AsyncOpenAI, simulator: Simulator) -> None:
    await simulator.configure(output_tokens=50)

    response = await sdk.responses.create(model="gpt-4.1-mini", input="Long answer please", max_output_tokens=20)

    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.usage is not None
    assert response.usage.output_tokens == 20
    assert response.output[0].status == "incomplete"


async def test_function_call_round_trip(sdk: openai.AsyncOpenAI, simulator: Simulator) -> None:
    conversation = await sdk.conversations.create()
    events = await simulator.stream_events(
        {
            "model": "gpt-4.1-mini",
            "input": "Please call get_weather for Paris",
            "tools": [WEATHER_TOOL],
            "conversation": conversation.id,
        }
    )
    call = ResponseFunctionToolCall.model_validate(events[-1].data["response"]["output"][0])
    types = [event.type for event in events]
    assert_contiguous(events)
    for event in events:
        validate_with_sdk(event)

    assert types[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert types[-3:] == [
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert events[2].data["item"]["arguments"] == ""
    assert events[2].data["item"]["status"] == "in_progress"
    assert call.name == "get_weather"
    assert call.call_id.startswith("call_")
    assert call.id
    assert call.id.startswith("fc_")
    assert call.arguments == '{"city":"Please call get_weather for Paris","days":1}'
    deltas = "".join(event.data["delta"] for event in events if event.type == "response.function_call_arguments.delta")
    assert deltas == call.arguments

    answer = await sdk.responses.create(
        model="gpt-4.1-mini",
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 21 C"}],
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        conversation=conversation.id,
    )
    assert answer.output[0].type == "message"
    assert "Sunny, 21 C" in answer.output_text
    items = [item async for item in sdk.conversations.items.list(conversation.id, order="asc")]
    assert [item.type for item in items] == ["message", "function_call", "function_call_output", "message"]


async def test_resending_an_item_the_conversation_holds_is_refused(sdk: openai.AsyncOpenAI) -> None:
    conversation = await sdk.conversations.create()
    first = await sdk.responses.create(
        model="gpt-4.1-mini",
        input="call get_weather",
        tools=[WEATHER_TOOL],
        conversation=conversation.id,  # type: ignore[list-item]
    )
    call = first.output[0]
    assert isinstance(call, ResponseFunctionToolCall)

    with pytest.raises(openai.BadRequestError) as caught:
        await sdk.responses.create(
            model="gpt-4.1-mini",
            input=[
                call.model_dump(exclude_none=True),  # type: ignore[list-item]
                {"type": "function_call_output", "call_id": call.call_id, "output": "ok"},
            ],
            conversation=conversation.id,
        )
    assert caught.value.param == "input"
    assert f"Duplicate item found with id {call.id}" in caught.value.message


async def test_tool_choice_required_always_calls_a_tool(sdk: openai.AsyncOpenAI) -> None:
    response = await sdk.responses.create(
        model="gpt-4.1-mini",
        input="Say hello",
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        tool_choice="required",
    )
    unnamed = await sdk.responses.create(
        model="gpt-4.1-mini",
        input="Say hello",
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
    )

    assert [item.type for item in response.output] == ["function_call"]
    assert [item.type for item in unnamed.output] == ["message"]


async def test_tool_output_without_its_call_is_refused(sdk: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await sdk.responses.create(
            model="gpt-4.1-mini", input=[{"type": "function_call_output", "call_id": "call_x", "output": "1"}]
        )
    assert caught.value.param == "input"


async def test_every_response_parses_as_the_sdk_response(sdk: openai.AsyncOpenAI, simulator: Simulator) -> None:
    created = await simulator.http.post(
        "/v1/responses", json={"model": "o4-mini", "input": "Hello", "reasoning": {"effort": "low"}}, headers=AUTH
    )

    response = Response.model_validate(created.json())
    assert response.reasoning is not None
    assert response.reasoning.effort == "low"
    assert [item.type for item in response.output] == ["reasoning", "message"]
    assert await asyncio.wait_for(sdk.responses.retrieve(response.id), 10) == response


async def test_a_deleted_item_leaves_the_next_turns_context(sdk: openai.AsyncOpenAI) -> None:
    conversation = await sdk.conversations.create(
        items=[
            {"role": "user", "content": "A long aside that the user later removes from the conversation."},
            {"type": "function_call", "call_id": "call_gone", "name": "get_weather", "arguments": "{}"},
        ]
    )
    before = await sdk.responses.create(
        model="gpt-4.1-mini", instructions=INSTRUCTIONS, input="Question", conversation=conversation.id
    )
    items = [item async for item in sdk.conversations.items.list(conversation.id, order="asc")]
    for item in items[:2]:
        await sdk.conversations.items.delete(item.id, conversation_id=conversation.id)

    after = await sdk.responses.create(
        model="gpt-4.1-mini", instructions=INSTRUCTIONS, input="Question", conversation=conversation.id
    )
    with pytest.raises(openai.BadRequestError) as caught:
        await sdk.responses.create(
            model="gpt-4.1-mini",
            input=[{"type": "function_call_output", "call_id": "call_gone", "output": "sunny"}],
            conversation=conversation.id,
        )

    assert before.usage is not None
    assert after.usage is not None
    # The second turn reads the first's question and answer, not the deleted aside and call.
    assert after.usage.input_tokens == before.usage.input_tokens - _tokens(items[0]) - _tokens(items[1]) + (
        _tokens(items[2]) + _tokens(items[3])
    )
    assert "call_gone" in caught.value.message


async def test_a_response_keeps_its_history_when_the_conversation_changes(sdk: openai.AsyncOpenAI) -> None:
    conversation = await sdk.conversations.create(items=[{"role": "user", "content": "Kept in the history"}])
    first = await sdk.responses.create(
        model="gpt-4.1-mini", instructions=INSTRUCTIONS, input="First", conversation=conversation.id, store=True
    )
    kept = [item async for item in sdk.conversations.items.list(conversation.id, order="asc")]
    await sdk.conversations.items.delete(kept[0].id, conversation_id=conversation.id)

    # previous_response_id reads what `first` was given then, whatever the conversation holds now.
    chained = await sdk.responses.create(
        model="gpt-4.1-mini", instructions=INSTRUCTIONS, input="Next", previous_response_id=first.id
    )

    assert first.usage is not None
    assert chained.usage is not None
    assert chained.usage.input_tokens_details.cached_tokens == first.usage.input_tokens
    assert chained.usage.input_tokens == (first.usage.input_tokens + _tokens(kept[2]) + count_tokens("Next")), (
        "the chained turn reads the deleted item, the first turn's input and output, and its own input"
    )
    assert await sdk.responses.retrieve(first.id) == first


def _tokens(item: object) -> int:
    return count_item_tokens([item.model_dump()])  # type: ignore[attr-defined]
