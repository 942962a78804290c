"""The whole history: each message serves its Responses items, taken from the stream Parley relayed (never fetched
upstream per read): a user message's input parts; an answer's reasoning summary, tool calls and their outputs,
and its text with its annotations."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx

from tests.conftest import RunningParley, create_api_user
from tests.turns.helpers import new_session, send, simulator_for

CITATION = {
    "type": "url_citation",
    "url": "https://example.com/lisbon",
    "title": "Lisbon in May",
    "start_index": 0,
    "end_index": 6,
}


def _sse(events: list[tuple[str, dict[str, Any]]]) -> str:
    return "".join(
        f"event: {name}\ndata: {json.dumps({'type': name, 'sequence_number': n, **payload})}\n\n"
        for n, (name, payload) in enumerate(events)
    )


def _cited_answer(text: str) -> str:
    """An upstream stream whose answer carries a URL citation, as web search answers do."""
    response_id = f"resp_{uuid.uuid4().hex}"
    item = {
        "id": f"msg_{uuid.uuid4().hex}",
        "type": "message",
        "status": "completed",
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": [CITATION]}],
    }
    base = {"id": response_id, "object": "response", "created_at": 1_700_000_000, "model": "gpt-5-mini"}
    usage = {"input_tokens": 5, "output_tokens": 3, "total_tokens": 8}
    return _sse(
        [
            ("response.created", {"response": {**base, "status": "in_progress", "output": [], "usage": None}}),
            (
                "response.output_text.delta",
                {"item_id": item["id"], "output_index": 0, "content_index": 0, "delta": text},
            ),
            ("response.output_item.done", {"output_index": 0, "item": item}),
            ("response.completed", {"response": {**base, "status": "completed", "output": [item], "usage": usage}}),
        ]
    )


async def _messages(client: httpx.AsyncClient, headers: dict[str, str], session_id: str) -> list[dict[str, Any]]:
    listed = await client.get(f"/v1/sessions/{session_id}/messages", headers=headers)
    assert listed.status_code == 200, listed.text
    return list(listed.json()["data"])


async def test_a_turn_keeps_its_input_parts_reasoning_summary_and_answer(client: httpx.AsyncClient) -> None:
    user = await create_api_user(client)
    session_id = await new_session(client, user)
    image = {"type": "input_image", "image_url": "https://example.com/photo.jpg", "detail": "low"}
    body = {"input": [{"role": "user", "content": [{"type": "input_text", "text": "What is in this photo?"}, image]}]}
    stream = await send(client, user, session_id, body)
    assert stream.terminal.name == "turn.completed"
    summary = "".join(str(e.data["delta"]) for e in stream.events if e.name == "response.reasoning_summary_text.delta")
    assert summary, "the demo prompt asks for a reasoning summary"

    asked, answered = await _messages(client, user.headers, session_id)
    assert asked["items"] == [{"type": "input_text", "text": "What is in this photo?"}, image]
    kinds = [item["type"] for item in answered["items"]]
    assert kinds == ["reasoning", "message"]
    assert "".join(answered["items"][0]["summary"]) == summary
    (part,) = answered["items"][1]["content"]
    assert part["text"] == answered["content"] == stream.terminal.data["turn"]["output_text"]
    assert answered["model"]


async def test_a_citation_stays_with_its_answer(client: httpx.AsyncClient, parley: RunningParley) -> None:
    user = await create_api_user(client)
    session_id = await new_session(client, user)
    await simulator_for(parley, client).faults({"kind": "replay", "sse": _cited_answer("Lisbon is warm in May.")})
    stream = await send(client, user, session_id, {"input": "Is Lisbon warm in May?"})
    assert stream.terminal.name == "turn.completed"
    answered = (await _messages(client, user.headers, session_id))[-1]
    (item,) = answered["items"]
    assert item["content"] == [{"type": "output_text", "text": "Lisbon is warm in May.", "annotations": [CITATION]}]


async def test_an_imported_history_is_served_as_text_items(client: httpx.AsyncClient) -> None:
    user = await create_api_user(client)
    history = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    session_id = await new_session(client, user, messages=history)
    asked, answered = await _messages(client, user.headers, session_id)
    assert asked["items"] == [{"type": "input_text", "text": "Hi"}]
    assert answered["items"] == [
        {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "Hello!", "annotations": []}],
        }
    ]
