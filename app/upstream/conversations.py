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
