"""Structured output end to end: a message's `options.text.format` reaches the upstream, the answer is JSON that
matches the schema, and a schema the upstream refuses comes back as a 4xx that names the problem."""

from __future__ import annotations

import json
from typing import Any

import httpx
import jsonschema
import pytest

from tests.conftest import ApiUser, RunningParley
from tests.turns.helpers import conversation_of, new_session, send, simulator_for

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "destination": {"type": "string"},
        "items": {"type": "array", "items": {"$ref": "#/$defs/item"}},
        "season": {"type": "string", "enum": ["spring", "summer", "autumn", "winter"]},
        "carry_on_only": {"type": ["boolean", "null"]},
    },
    "required": ["destination", "items", "season", "carry_on_only"],
    "additionalProperties": False,
    "$defs": {
        "item": {
            "type": "object",
            "properties": {"name": {"type": "string"}, "count": {"type": "integer", "minimum": 1, "maximum": 6}},
            "required": ["name", "count"],
            "additionalProperties": False,
        }
    },
}


def _options(schema: dict[str, Any]) -> dict[str, Any]:
    return {"text": {"format": {"type": "json_schema", "name": "packing_list", "schema": schema, "strict": True}}}


async def test_a_json_schema_message_gets_json_that_validates(client: httpx.AsyncClient, user: ApiUser) -> None:
    session_id = await new_session(client, user)
    stream = await send(client, user, session_id, {"input": "Pack for Lisbon in May.", "options": _options(SCHEMA)})
    assert stream.terminal.name == "turn.completed", stream.terminal.data
    jsonschema.validate(json.loads(stream.text), SCHEMA)

    finished = await client.post(
        f"/v1/sessions/{session_id}/messages",
        json={"input": "Now for Oslo in winter.", "options": _options(SCHEMA), "stream": False},
        headers=user.headers,
    )
    assert finished.status_code == 200, finished.text
    jsonschema.validate(json.loads(finished.json()["output_text"]), SCHEMA)


@pytest.mark.parametrize("stream", [True, False])
async def test_a_schema_the_upstream_refuses_is_a_4xx_that_says_why(
    client: httpx.AsyncClient, parley: RunningParley, user: ApiUser, stream: bool
) -> None:
    loose = {**SCHEMA, "additionalProperties": True}
    session_id = await new_session(client, user)
    response = await client.post(
        f"/v1/sessions/{session_id}/messages",
        json={"input": "Pack for Lisbon.", "options": _options(loose), "stream": stream},
        headers=user.headers,
    )

    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "invalid_json_schema"
    assert error["message"] == (
        "The upstream model service rejected the request: Invalid schema for response_format 'packing_list': "
        "In context=(), 'additionalProperties' is required to be supplied and to be false."
    )
    # The refusal reached the upstream once; the session is free for a corrected schema.
    calls = await simulator_for(parley, client).response_calls(await conversation_of(client, user, session_id))
    assert len(calls) == 1
    fixed = await send(client, user, session_id, {"input": "Pack for Lisbon.", "options": _options(SCHEMA)})
    assert fixed.terminal.name == "turn.completed", fixed.terminal.data
