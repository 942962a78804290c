"""The Conversations API: conversations and their items, with OpenAI's cursor pagination.

What the real service enforces, enforced here too: items are only appended, in order (no parameter places them
anywhere else: the SDK's `conversations.create` sends `items` and `metadata`, `conversations.items.create` sends
`items` and the query's `include`, and any other is refused as unknown), at most 20 per call, and one per delete;
a `reasoning` item must carry its id or its `encrypted_content`; an item id is not repeated in a conversation.
Deleting a conversation deletes the conversation, not its items: the responses that ran on it keep their history.
"""

from __future__ import annotations

from collections.abc import Container, Iterable
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from app.simulator.api_errors import (
    SimulatorError,
    conversation_not_found,
    integer_out_of_range,
    invalid_type,
    invalid_value,
    missing_parameter,
    not_found,
    unknown_parameter,
)
from app.simulator.deps import JsonBodyDep, StateDep
from app.simulator.items import check_no_duplicate_ids, check_storable_in_conversation, parse_input
from app.simulator.json_types import JsonObject, json_response
from app.simulator.state import SimulatorState, StoredConversation
from app.simulator.validation import metadata, optional_list

router = APIRouter(prefix="/v1/conversations")

MAX_ITEMS_PER_CALL = 20
_CREATE_PARAMETERS = frozenset({"items", "metadata"})
_ITEMS_CREATE_PARAMETERS = frozenset({"items"})
_ITEMS_CREATE_QUERY = frozenset({"include", "include[]"})  # the SDK sends `include[]=…`
_ENCRYPTED_REASONING = "reasoning.encrypted_content"


@router.post("")
async def create_conversation(state: StateDep, body: JsonBodyDep) -> Response:
    _check_known(body, _CREATE_PARAMETERS)
    items = _new_items(optional_list(body, "items", max_length=MAX_ITEMS_PER_CALL) or [], existing=())
    conversation = state.create_conversation(metadata(body.get("metadata")), items)
    return json_response(conversation.to_json())


@router.get("/{conversation_id}")
async def get_conversation(conversation_id: str, state: StateDep) -> Response:
    return json_response((await _conversation(state, conversation_id)).to_json())


@router.post("/{conversation_id}")
async def update_conversation(conversation_id: str, state: StateDep, body: JsonBodyDep) -> Response:
    conversation = await _conversation(state, conversation_id)
    if "metadata" not in body:
        raise missing_parameter("metadata")
    state.set_metadata(conversation, metadata(body["metadata"]))
    return json_response(conversation.to_json())


@router.delete("/{conversation_id}")
async def delete_conversation(conversation_id: str, state: StateDep) -> Response:
    conversation = await _conversation(state, conversation_id)
    state.delete_conversation(conversation)
    return json_response({"id": conversation.id, "object": "conversation.deleted", "deleted": True})


@router.get("/{conversation_id}/items")
async def list_items(conversation_id: str, request: Request, state: StateDep) -> Response:
    conversation = await _conversation(state, conversation_id)
    query = request.query_params
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise invalid_value("order", order, ["asc", "desc"])
    limit = _limit(query.get("limit"))
    after = query.get("after")
    found = conversation.items.page(newest_first=order == "desc", after=after, limit=limit)
    if found is None:
        raise not_found(f"Item with id '{after}' not found.", param="after")
    page, has_more = found
    return json_response(_list(_shown(page, request), has_more=has_more))


@router.post("/{conversation_id}/items")
async def create_items(conversation_id: str, request: Request, state: StateDep, body: JsonBodyDep) -> Response:
    _check_known(request.query_params, _ITEMS_CREATE_QUERY)
    _check_known(body, _ITEMS_CREATE_PARAMETERS)
    conversation = await _conversation(state, conversation_id)
    raw_items = optional_list(body, "items", max_length=MAX_ITEMS_PER_CALL)
    if raw_items is None:
        raise missing_parameter("items")
    items = _new_items(raw_items, existing=conversation.items)
    state.append_items(conversation, items)
    return json_response(_list(_shown(items, request), has_more=False))


@router.get("/{conversation_id}/items/{item_id}")
async def get_item(conversation_id: str, item_id: str, request: Request, state: StateDep) -> Response:
    return json_response(_shown([_item(await _conversation(state, conversation_id), item_id)], request)[0])


@router.delete("/{conversation_id}/items/{item_id}")
async def delete_item(conversation_id: str, item_id: str, state: StateDep) -> Response:
    conversation = await _conversation(state, conversation_id)
    if not state.remove_item(conversation, item_id):
        raise _item_not_found(item_id)
    return json_response(conversation.to_json())


def _check_known(given: Iterable[str], known: frozenset[str]) -> None:
    for key in given:
        if key not in known:
            raise unknown_parameter(key)


def _new_items(raw_items: list[Any], *, existing: Container[str]) -> list[JsonObject]:
    """Items as sent to be appended (already at most 20): checked as the real service checks them, given ids."""
    check_storable_in_conversation(raw_items)
    items = parse_input(raw_items, param="items")
    check_no_duplicate_ids(existing, items, param="items")
    return items


def _shown(items: list[JsonObject], request: Request) -> list[JsonObject]:
    """A reasoning item's `encrypted_content` is kept, but returned only when `include` asks for it."""
    if _ENCRYPTED_REASONING in request.query_params.getlist("include") + request.query_params.getlist("include[]"):
        return items
    return [
        {key: value for key, value in item.items() if key != "encrypted_content"}
        if item.get("type") == "reasoning"
        else item
        for item in items
    ]


async def _conversation(state: SimulatorState, conversation_id: str) -> StoredConversation:
    conversation = await state.find_conversation(conversation_id)
    if conversation is None:
        raise conversation_not_found(conversation_id)
    return conversation


def _item(conversation: StoredConversation, item_id: str) -> JsonObject:
    item = conversation.items.find(item_id)
    if item is None:
        raise _item_not_found(item_id)
    return item


def _item_not_found(item_id: str) -> SimulatorError:
    return not_found(f"Item with id '{item_id}' not found.")


def _limit(raw: str | None) -> int:
    if raw is None:
        return 20
    try:
        limit = int(raw)
    except ValueError:
        raise invalid_type("limit", "an integer", raw) from None
    if not 1 <= limit <= 100:
        raise integer_out_of_range("limit", limit, minimum=1, maximum=100)
    return limit


def _list(items: list[JsonObject], *, has_more: bool) -> JsonObject:
    return {
        "object": "list",
        "data": items,
        "first_id": items[0]["id"] if items else None,
        "last_id": items[-1]["id"] if items else None,
        "has_more": has_more,
    }
