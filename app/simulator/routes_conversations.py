"""The Conversations API: conversations and their items, with OpenAI's cursor pagination."""

from __future__ import annotations

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
)
from app.simulator.deps import JsonBodyDep, StateDep
from app.simulator.items import check_no_duplicate_ids, parse_input
from app.simulator.json_types import JsonObject, json_response
from app.simulator.state import SimulatorState, StoredConversation
from app.simulator.validation import metadata, optional_list

router = APIRouter(prefix="/v1/conversations")

MAX_ITEMS_PER_CALL = 20


@router.post("")
async def create_conversation(state: StateDep, body: JsonBodyDep) -> Response:
    items = parse_input(optional_list(body, "items", max_length=MAX_ITEMS_PER_CALL) or [], param="items")
    check_no_duplicate_ids([], items)
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
    return json_response(_list(page, has_more=has_more))


@router.post("/{conversation_id}/items")
async def create_items(conversation_id: str, state: StateDep, body: JsonBodyDep) -> Response:
    conversation = await _conversation(state, conversation_id)
    raw_items = optional_list(body, "items", max_length=MAX_ITEMS_PER_CALL)
    if raw_items is None:
        raise missing_parameter("items")
    items = parse_input(raw_items, param="items")
    check_no_duplicate_ids(conversation.items, items)
    state.append_items(conversation, items)
    return json_response(_list(items, has_more=False))


@router.get("/{conversation_id}/items/{item_id}")
async def get_item(conversation_id: str, item_id: str, state: StateDep) -> Response:
    return json_response(_item(await _conversation(state, conversation_id), item_id))


@router.delete("/{conversation_id}/items/{item_id}")
async def delete_item(conversation_id: str, item_id: str, state: StateDep) -> Response:
    conversation = await _conversation(state, conversation_id)
    if not state.remove_item(conversation, item_id):
        raise _item_not_found(item_id)
    return json_response(conversation.to_json())


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
