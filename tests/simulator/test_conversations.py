"""The Conversations API through the official SDK."""

from __future__ import annotations

import openai
import pytest
from openai.types.conversations import Message

from tests.simulator.conftest import AUTH, Simulator


async def test_conversation_lifecycle(sdk: openai.AsyncOpenAI) -> None:
    created = await sdk.conversations.create(metadata={"topic": "demo"}, items=[{"role": "user", "content": "Hello"}])
    assert created.id.startswith("conv_")
    assert created.object == "conversation"
    assert created.metadata == {"topic": "demo"}

    assert (await sdk.conversations.retrieve(created.id)).created_at == created.created_at
    updated = await sdk.conversations.update(created.id, metadata={"topic": "changed"})
    assert updated.metadata == {"topic": "changed"}

    deleted = await sdk.conversations.delete(created.id)
    assert (deleted.id, deleted.deleted, deleted.object) == (created.id, True, "conversation.deleted")
    with pytest.raises(openai.NotFoundError) as caught:
        await sdk.conversations.retrieve(created.id)
    assert created.id in caught.value.message


async def test_items_have_ids_and_real_shapes(sdk: openai.AsyncOpenAI) -> None:
    conversation = await sdk.conversations.create(
        items=[
            {"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "content": "4"},
            {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "Be brief."}]},
        ]
    )

    items = [item async for item in sdk.conversations.items.list(conversation.id, order="asc")]

    assert all(isinstance(item, Message) for item in items)
    messages = [item for item in items if isinstance(item, Message)]
    assert [item.role for item in messages] == ["user", "assistant", "developer"]
    assert all(item.id.startswith("msg_") and item.status == "completed" for item in messages)
    assert [part.type for item in messages for part in item.content] == ["input_text", "output_text", "input_text"]


async def test_items_page_newest_first_by_default(sdk: openai.AsyncOpenAI) -> None:
    conversation = await sdk.conversations.create()
    for start in range(0, 25, 5):
        await sdk.conversations.items.create(
            conversation.id, items=[{"role": "user", "content": f"m{n}"} for n in range(start, start + 5)]
        )

    first_page = await sdk.conversations.items.list(conversation.id, limit=10)
    everything = [item async for item in sdk.conversations.items.list(conversation.id, limit=10)]

    assert first_page.has_more is True
    assert len(first_page.data) == 10
    texts = [item.content[0].text for item in everything if isinstance(item, Message)]  # type: ignore[union-attr]
    assert texts == [f"m{n}" for n in reversed(range(25))]
    raw = first_page.model_dump()
    assert raw["first_id"] == first_page.data[0].id
    assert raw["last_id"] == first_page.data[-1].id


async def test_single_items_can_be_read_and_deleted(sdk: openai.AsyncOpenAI) -> None:
    conversation = await sdk.conversations.create(items=[{"role": "user", "content": "keep"}])
    added = await sdk.conversations.items.create(
        conversation.id,
        items=[{"type": "function_call_output", "call_id": "call_abc", "output": "42"}],
    )
    item_id = added.data[0].id
    assert item_id.startswith("fco_")

    fetched = await sdk.conversations.items.retrieve(item_id, conversation_id=conversation.id)
    after_delete = await sdk.conversations.items.delete(item_id, conversation_id=conversation.id)

    assert fetched.type == "function_call_output"
    assert after_delete.id == conversation.id
    assert after_delete.object == "conversation"
    remaining = [item async for item in sdk.conversations.items.list(conversation.id)]
    assert len(remaining) == 1
    with pytest.raises(openai.NotFoundError):
        await sdk.conversations.items.retrieve(item_id, conversation_id=conversation.id)


async def test_more_than_twenty_items_per_call_is_refused(sdk: openai.AsyncOpenAI) -> None:
    items = [{"role": "user", "content": str(n)} for n in range(21)]

    with pytest.raises(openai.BadRequestError) as caught:
        await sdk.conversations.create(items=items)  # type: ignore[arg-type]
    assert caught.value.code == "array_above_max_length"
    assert caught.value.param == "items"


async def test_unknown_conversation_is_a_real_looking_404(simulator: Simulator) -> None:
    response = await simulator.http.get("/v1/conversations/conv_missing/items", headers=AUTH)

    assert response.status_code == 404
    assert response.json() == {
        "error": {
            "message": "Conversation with id 'conv_missing' not found.",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    }


async def test_limit_outside_one_to_hundred_is_refused(sdk: openai.AsyncOpenAI) -> None:
    conversation = await sdk.conversations.create()

    with pytest.raises(openai.BadRequestError) as caught:
        await sdk.conversations.items.list(conversation.id, limit=101)
    assert caught.value.code == "integer_above_max_value"
