"""Files API calls: the upstream copy of a file a user uploaded."""

from __future__ import annotations

import logging

import openai

from app.upstream.failures import map_upstream_error

logger = logging.getLogger(__name__)


async def create_file(client: openai.AsyncOpenAI, *, filename: str, data: bytes, content_type: str) -> str:
    """Upload for use in model input (purpose `user_data`); returns the upstream's `file-…` id."""
    try:
        created = await client.files.create(file=(filename, data, content_type), purpose="user_data")
    except openai.OpenAIError as error:
        raise map_upstream_error(error) from error
    return created.id


async def delete_file(client: openai.AsyncOpenAI, file_id: str) -> None:
    """Delete upstream; a file that is already gone counts as deleted."""
    try:
        await client.files.delete(file_id)
    except openai.NotFoundError:
        logger.info("upstream.file_already_deleted", extra={"upstream_file_id": file_id})
    except openai.OpenAIError as error:
        raise map_upstream_error(error) from error
