"""A conversation's items, kept so that a response on it starts in the same time however long it has grown.

A response on a conversation needs four things from its items: whether an input item's id is already there,
the call ids of its function calls (a `function_call_output` must answer one), their token count (usage and
`cached_tokens`) and, for a turn that only sends tool outputs, the newest user text. Kept as aggregates
updated on every change, instead of recomputed from every item at every response, they cost the same at the
first turn and the thousandth.

Each item is kept as the JSON the service returns (one `bytes`, decoded when read): the collector never walks
the simulator's conversations, where each item was three or four tracked objects. The list of items is
replaced, never changed in place, when one is deleted, so what a response saw (`ItemsPrefix`) stays a prefix of
a list nobody changes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import orjson

from app.simulator.items import count_item_tokens, item_text
from app.simulator.json_types import JsonObject


@dataclass(frozen=True, slots=True)
class ItemsPrefix:
    """The first `length` items of `encoded`: the history a response was given."""

    encoded: list[tuple[str, bytes]]
    length: int

    def decoded(self) -> list[JsonObject]:
        return [orjson.loads(encoded) for _, encoded in self.encoded[: self.length]]

    def encoded_items(self) -> list[bytes]:
        return [encoded for _, encoded in self.encoded[: self.length]]


EMPTY_PREFIX = ItemsPrefix([], 0)


class ConversationItems:
    __slots__ = ("_by_id", "_encoded", "call_ids", "tokens")

    def __init__(self, items: Iterable[JsonObject] = ()) -> None:
        self._encoded: list[tuple[str, bytes]] = []
        self._by_id: dict[str, bytes] = {}
        self.call_ids: set[str] = set()
        """The call ids of the function calls among the items."""
        self.tokens = 0
        """The items' token count, as `count_item_tokens` counts them."""
        self.extend(items)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._by_id

    def extend(self, items: Iterable[JsonObject]) -> list[tuple[str, bytes]]:
        """Append `items`; returns them as kept: (id, JSON)."""
        added: list[tuple[str, bytes]] = []
        for item in items:
            item_id = str(item["id"])
            entry = (item_id, orjson.dumps(item))
            self._encoded.append(entry)
            added.append(entry)
            self._by_id[item_id] = entry[1]
            self.tokens += count_item_tokens((item,))
            if item.get("type") == "function_call":
                self.call_ids.add(str(item.get("call_id")))
        return added

    def find(self, item_id: str) -> JsonObject | None:
        encoded = self._by_id.get(item_id)
        return None if encoded is None else orjson.loads(encoded)

    def remove(self, item_id: str) -> bool:
        encoded = self._by_id.pop(item_id, None)
        if encoded is None:
            return False
        # A new list: the prefixes earlier responses hold keep theirs.
        self._encoded = [entry for entry in self._encoded if entry[0] != item_id]
        item = orjson.loads(encoded)
        self.tokens -= count_item_tokens((item,))
        if item.get("type") == "function_call" and not any(
            orjson.loads(other).get("call_id") == item.get("call_id") for _, other in self._encoded
        ):
            self.call_ids.discard(str(item.get("call_id")))
        return True

    def prefix(self, length: int | None = None) -> ItemsPrefix:
        """The items as they are now (or the first `length` of them), for a response's history (no copy: later
        items only go after them)."""
        count = len(self._encoded)
        return ItemsPrefix(self._encoded, count if length is None else min(length, count))

    def page(self, *, newest_first: bool, after: str | None, limit: int) -> tuple[list[JsonObject], bool] | None:
        """Up to `limit` items in the order asked for, after the item `after` (or from the first), and whether
        more follow; None when no item has the id `after`. Only the page is decoded."""
        entries = self._encoded[::-1] if newest_first else self._encoded
        start = 0
        if after is not None:
            start = next((index + 1 for index, (item_id, _) in enumerate(entries) if item_id == after), 0)
            if start == 0:
                return None
        page = [orjson.loads(encoded) for _, encoded in entries[start : start + limit]]
        return page, len(entries) - start > limit

    def decoded(self, *, newest_first: bool = False) -> Iterator[JsonObject]:
        entries = reversed(self._encoded) if newest_first else iter(self._encoded)
        return (orjson.loads(encoded) for _, encoded in entries)

    def newest_user_text(self) -> str | None:
        """From the end: a user message is usually among the last few items."""
        for item in self.decoded(newest_first=True):
            if item.get("type") == "message" and item.get("role") == "user":
                return item_text(item)
        return None
