"""What the real Conversations API refuses or keeps, as a client of the official SDK sees it: items only
appended (at most 20 a call), reasoning items only with their id or encrypted content, no repeated item ids, a
conversation locked while a response runs on it, and a deleted conversation's items kept for its responses."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from app.simulator.generation import count_tokens
from tests.simulator.conftest import Simulator

INSTRUCTIONS = "You are a test assistant."
TOO_MANY = (
    "Invalid 'items': array too long. Expected an array with maximum length 20, "
    "but got an array with length 21 instead."
)


def _messages(count: int, prefix: str = "m") -> list[Any]:
    return [{"role": "user", "content": f"{prefix}{n}"} for n in range(count)]


async def _texts(sdk: openai.AsyncOpenAI, conversation_id: str) -> list[str]:
    return [
        item.content[0].text  # type: ignore[union-attr]
        async for item in sdk.conversations.items.list(conversation_id, order="asc")
        if item.type == "message"
    ]


async def test_at_most_twenty_items_per_call(sdk: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as on_create:
        await sdk.conversations.create(items=_messages(21))
    conversation = await sdk.conversations.create(items=_messages(20, "a"))
    with pytest.raises(openai.BadRequestError) as on_add:
        await sdk.conversations.items.create(conversation.id, items=_messages(21, "b"))
    await sdk.conversations.items.create(conversation.id, items=_messages(20, "c"))

    for caught in (on_create, on_add):
        assert caught.value.status_code == 400
        assert caught.value.body == {
            "message": TOO_MANY,
            "type": "invalid_request_error",
            "param": "items",
            "code": "array_above_max_length",
        }
    assert await _texts(sdk, conversation.id) == [f"a{n}" for n in range(20)] + [f"c{n}" for n in range(20)]


async def test_items_are_only_appended(sdk: openai.AsyncOpenAI) -> None:
    conversation = await sdk.conversations.create(items=_messages(2, "first"))
    first = (await sdk.conversations.items.list(conversation.id, order="asc")).data[0]

    refused: list[tuple[str, pytest.ExceptionInfo[openai.BadRequestError]]] = []
    for param, options in [
        ("position", {"extra_body": {"position": 0}}),
        ("after", {"extra_query": {"after": first.id}}),
        ("before", {"extra_body": {"before": first.id}}),
    ]:
        with pytest.raises(openai.BadRequestError) as caught:
            await sdk.conversations.items.create(conversation.id, items=_messages(1, "inserted"), **options)
        refused.append((param, caught))
    with pytest.raises(openai.BadRequestError) as on_create:
        await sdk.conversations.create(items=_messages(1), extra_body={"position": 0})
    await sdk.conversations.items.create(conversation.id, items=_messages(2, "then"))
    await sdk.conversations.items.create(conversation.id, items=_messages(1, "last"))

    for param, caught in [*refused, ("position", on_create)]:
        assert caught.value.body == {
            "message": f"Unknown parameter: '{param}'.",
            "type": "invalid_request_error",
            "param": param,
            "code": "unknown_parameter",
        }
    assert await _texts(sdk, conversation.id) == ["first0", "first1", "then0", "then1", "last0"]


async def test_a_reasoning_item_needs_its_id_or_its_encrypted_content(sdk: openai.AsyncOpenAI) -> None:
    bare: Any = {"type": "reasoning", "summary": []}
    answer: Any = {"role": "assistant", "content": "An answer"}
    conversation = await sdk.conversations.create(items=_messages(1))

    with pytest.raises(openai.BadRequestError) as on_create:
        await sdk.conversations.create(items=[bare, answer])
    with pytest.raises(openai.BadRequestError) as on_add:
        await sdk.conversations.items.create(conversation.id, items=[bare, answer])
    with pytest.raises(openai.BadRequestError) as no_summary:
        await sdk.conversations.items.create(conversation.id, items=[{"type": "reasoning", "encrypted_content": "x"}])  # type: ignore[list-item]

    for caught in (on_create, on_add):
        assert caught.value.status_code == 400
        assert caught.value.body == {
            "message": "Invalid item",
            "type": "invalid_request_error",
            "param": "item",
            "code": "invalid_item",
        }
    assert no_summary.value.code == "missing_required_parameter"
    assert no_summary.value.param == "items[0].summary"
    assert await _texts(sdk, conversation.id) == ["m0"], "nothing of a refused call is kept"

    # With its encrypted content (or its id, the item the service stored) it is kept; the content comes back
    # only when asked for.
    encrypted: Any = {"type": "reasoning", "summary": [], "encrypted_content": "gAAAAAB-opaque"}
    by_id: Any = {"type": "reasoning", "id": "rs_stored", "summary": []}
    added = await sdk.conversations.items.create(conversation.id, items=[encrypted, answer, by_id, answer])
    listed = [item async for item in sdk.conversations.items.list(conversation.id, order="asc")]
    included = [
        item
        async for item in sdk.conversations.items.list(
            conversation.id, order="asc", include=["reasoning.encrypted_content"]
        )
    ]

    assert [item.type for item in added.data] == ["reasoning", "message", "reasoning", "message"]
    assert added.data[2].id == "rs_stored"
    assert [getattr(item, "encrypted_content", None) for item in listed if item.type == "reasoning"] == [None, None]
    assert [getattr(item, "encrypted_content", None) for item in included if item.type == "reasoning"] == [
        "gAAAAAB-opaque",
        None,
    ]


async def test_a_reasoning_model_gives_encrypted_content_when_asked_and_a_branch_can_replay_it(
    sdk: openai.AsyncOpenAI,
) -> None:
    conversation = await sdk.conversations.create()
    plain = await sdk.responses.create(model="gpt-5-mini", input="Think first", conversation=conversation.id)
    asked = await sdk.responses.create(
        model="gpt-5-mini",
        input="Think again",
        conversation=conversation.id,
        include=["reasoning.encrypted_content"],
    )

    plain_reasoning = [item for item in plain.output if item.type == "reasoning"]
    asked_reasoning = [item for item in asked.output if item.type == "reasoning"]
    assert plain_reasoning
    assert asked_reasoning
    assert plain_reasoning[0].encrypted_content is None
    assert (asked_reasoning[0].encrypted_content or "").startswith("gAAAAA")

    # A branch: the history replayed into a new conversation, reasoning items with their encrypted content.
    history = [
        item.model_dump(exclude_none=True)
        async for item in sdk.conversations.items.list(
            conversation.id, order="asc", include=["reasoning.encrypted_content"]
        )
    ]
    replayable = [
        {key: value for key, value in item.items() if key != "id"}
        for item in history
        if item["type"] != "reasoning" or "encrypted_content" in item
    ]
    branch = await sdk.conversations.create(items=replayable)  # type: ignore[arg-type]
    kept = [item async for item in sdk.conversations.items.list(branch.id, order="asc")]

    assert [item.type for item in kept] == [item["type"] for item in replayable]
    assert "reasoning" in [item.type for item in kept]


async def test_an_item_id_is_not_repeated_in_a_conversation(sdk: openai.AsyncOpenAI) -> None:
    item: Any = {"type": "message", "id": "msg_chosen", "role": "user", "content": "Hello"}
    with pytest.raises(openai.BadRequestError) as in_one_call:
        await sdk.conversations.create(items=[item, item])
    conversation = await sdk.conversations.create(items=[item])
    with pytest.raises(openai.BadRequestError) as already_there:
        await sdk.conversations.items.create(conversation.id, items=[item])
    with pytest.raises(openai.BadRequestError) as as_input:
        await sdk.responses.create(model="gpt-4.1-mini", input=[item], conversation=conversation.id)
    elsewhere = await sdk.conversations.create(items=[item])

    for caught, param in [(in_one_call, "items"), (already_there, "items"), (as_input, "input")]:
        assert caught.value.status_code == 400
        assert caught.value.body == {
            "message": "Duplicate item found with id msg_chosen. Remove duplicate items from your input and try again.",
            "type": "invalid_request_error",
            "param": param,
            "code": None,
        }
    assert await _texts(sdk, conversation.id) == ["Hello"]
    assert await _texts(sdk, elsewhere.id) == ["Hello"], "another conversation may hold an item with that id"


async def test_a_conversation_is_locked_while_a_background_response_runs_on_it(
    sdk: openai.AsyncOpenAI, simulator: Simulator
) -> None:
    conversation = await sdk.conversations.create()
    await simulator.configure(tokens_per_second=20, output_tokens=200)
    running = await sdk.responses.create(
        model="gpt-4.1-mini", input="A long one", conversation=conversation.id, background=True
    )
    assert running.status == "queued"

    with pytest.raises(openai.BadRequestError) as streamed:
        await sdk.responses.create(model="gpt-4.1-mini", input="Me too", conversation=conversation.id, stream=True)
    with pytest.raises(openai.BadRequestError) as in_background:
        await sdk.responses.create(model="gpt-4.1-mini", input="Me too", conversation=conversation.id, background=True)
    for caught in (streamed, in_background):
        assert caught.value.status_code == 400
        assert caught.value.body == {
            "message": "Another process is currently operating on this conversation. Please retry in a few seconds.",
            "type": "invalid_request_error",
            "param": "conversation",
            "code": "conversation_locked",
        }

    cancelled = await sdk.responses.cancel(running.id)
    await simulator.configure(tokens_per_second=0, output_tokens=20)
    after = await sdk.responses.create(model="gpt-4.1-mini", input="Now", conversation=conversation.id)

    assert cancelled.status == "cancelled"
    assert after.status == "completed"
    other = await sdk.conversations.create()
    assert (await sdk.responses.create(model="gpt-4.1-mini", input="Hi", conversation=other.id)).status == ("completed")


async def test_a_deleted_conversation_is_gone_but_its_responses_keep_their_items(sdk: openai.AsyncOpenAI) -> None:
    conversation = await sdk.conversations.create(items=[{"role": "user", "content": "Remember the number 7."}])
    first = await sdk.responses.create(
        model="gpt-4.1-mini", instructions=INSTRUCTIONS, input="What number?", conversation=conversation.id
    )
    items = [item async for item in sdk.conversations.items.list(conversation.id, order="asc")]

    deleted = await sdk.conversations.delete(conversation.id)

    assert deleted.deleted is True
    with pytest.raises(openai.NotFoundError):
        await sdk.conversations.retrieve(conversation.id)
    with pytest.raises(openai.NotFoundError):
        await sdk.conversations.items.retrieve(items[0].id, conversation_id=conversation.id)
    with pytest.raises(openai.NotFoundError) as on_response:
        await sdk.responses.create(model="gpt-4.1-mini", input="More", conversation=conversation.id)
    assert on_response.value.param == "conversation"

    assert await sdk.responses.retrieve(first.id) == first
    chained = await sdk.responses.create(
        model="gpt-4.1-mini", instructions=INSTRUCTIONS, input="And?", previous_response_id=first.id
    )
    assert first.usage is not None
    assert chained.usage is not None
    assert chained.usage.input_tokens > first.usage.input_tokens + count_tokens("And?"), (
        "the chain still reads the deleted conversation's items"
    )
