"""Conversations API calls: a session's upstream thread."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import openai

from app.upstream.failures import map_upstream_error

logger = logging.getLogger(__name__)

# The Conversations API takes at most 20 items per create or items.create call.
MAX_ITEMS_PER_CALL = 20


def message_item(role: str, content: str) -> dict[str, Any]:
    return {"type": "message", "role": role, "content": content}


async def create_conversation(
    client: openai.AsyncOpenAI,
    *,
    metadata: dict[str, str],
    items: Sequence[dict[str, Any]] = (),
) -> str:
    """Create a conversation holding `items` in order; returns its `conv_…` id.

    If importing the later chunks fails, the half-filled conversation is deleted so no orphan is left.
    """
    first, rest = list(items[:MAX_ITEMS_PER_CALL]), items[MAX_ITEMS_PER_CALL:]
    try:
        conversation = await client.conversations.create(items=first, metadata=metadata)  # type: ignore[arg-type]
    except openai.OpenAIError as error:
        raise map_upstream_error(error) from error
    try:
        for start in range(0, len(rest), MAX_ITEMS_PER_CALL):
            chunk = list(rest[start : start + MAX_ITEMS_PER_CALL])
            await client.conversations.items.create(conversation.id, items=chunk)  # type: ignore[arg-type]
    except openai.OpenAIError as error:
        await delete_conversation(client, conversation.id)
        raise map_upstream_error(error) from error
    return conversation.id


async def delete_conversation(client: openai.AsyncOpenAI, conversation_id: str) -> None:
    """Delete upstream; a conversation that is already gone counts as deleted."""
    try:
        await client.conversations.delete(conversation_id)
    except openai.NotFoundError:
        logger.info("upstream.conversation_already_deleted", extra={"conversation_id": conversation_id})
    except openai.OpenAIError as error:
        raise map_upstream_error(error) from error


async def add_items(client: openai.AsyncOpenAI, conversation_id: str, items: Sequence[dict[str, Any]]) -> None:
    try:
        for start in range(0, len(items), MAX_ITEMS_PER_CALL):
            chunk = list(items[start : start + MAX_ITEMS_PER_CALL])
            await client.conversations.items.create(conversation_id, items=chunk)  # type: ignore[arg-type]
    except openai.OpenAIError as error:
        raise map_upstream_error(error) from error


async def newest_items(client: openai.AsyncOpenAI, conversation_id: str, *, limit: int) -> list[dict[str, Any]]:
    """The conversation's last `limit` items (at most 100), newest first, as plain JSON."""
    try:
        raw = await client.conversations.items.with_raw_response.list(
            conversation_id, order="desc", limit=max(1, min(limit, 100))
        )
        parsed: Any = raw.http_response.json()
    except openai.OpenAIError as error:
        raise map_upstream_error(error) from error
    data = parsed.get("data") if isinstance(parsed, dict) else None
    return [item for item in data if isinstance(item, dict)] if isinstance(data, list) else []


def _signature(item: dict[str, Any]) -> tuple[str, str] | None:
    """What tells an input item from another in a conversation (the upstream gives stored items ids of its own)."""
    kind = item.get("type", "message")
    if kind == "function_call_output":
        return kind, str(item.get("call_id"))
    if kind != "message":
        return None
    return f"message:{item.get('role')}", _text_of(item)


def _text_of(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    return "".join(
        str(part.get("text", ""))
        for part in content or ()
        if isinstance(part, dict) and part.get("type") in ("input_text", "output_text")
    )


async def settle_unfinished_turn(
    client: openai.AsyncOpenAI,
    conversation_id: str,
    *,
    input_items: list[dict[str, Any]],
    response: dict[str, Any] | None,
    answer: str,
) -> str:
    """Make the conversation end as Parley's history shows a turn whose response did not finish by itself
    (cancelled, cut off, stalled, interrupted): its input, then its partial answer as an assistant message.

    Whether the upstream kept such a response's items is not documented, so the conversation is read: if the
    response's output items are in it, the upstream kept the response, and the answer is the text it kept (its
    function calls get an output, so that the next input is accepted); otherwise the input (unless it is
    already the newest items) and `answer` are added. Returns the answer the conversation now holds, which
    Parley stores."""
    output = [item for item in (response or {}).get("output") or () if isinstance(item, dict)]
    newest = await newest_items(client, conversation_id, limit=len(input_items) + len(output) + 2)
    output_ids = {item.get("id") for item in output if item.get("id")}
    kept = [item for item in reversed(newest) if item.get("id") in output_ids]
    if kept:
        answered = {item.get("call_id") for item in newest if item.get("type") == "function_call_output"}
        closing = [
            {
                "type": "function_call_output",
                "call_id": item["call_id"],
                "output": '{"error": "The turn ended before this call was answered."}',
            }
            for item in kept
            if item.get("type") == "function_call" and item.get("call_id") not in answered
        ]
        if closing:
            await add_items(client, conversation_id, closing)
        return "".join(_text_of(item) for item in kept if item.get("type") == "message")
    expected = [_signature(item) for item in input_items]
    present = [_signature(item) for item in reversed(newest[: len(input_items)])]
    items = [] if input_items and present == expected else list(input_items)
    if answer:
        items.append(message_item("assistant", answer))
    if items:
        await add_items(client, conversation_id, items)
    return answer
