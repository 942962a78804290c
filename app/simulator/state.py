"""Everything one simulator instance remembers, kept in memory on its app (never in module globals)."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, cast
from urllib.parse import parse_qsl

import orjson

from app.simulator.conversation_items import ConversationItems, ItemsPrefix
from app.simulator.faults import Fault
from app.simulator.ids import new_id
from app.simulator.json_types import JsonObject
from app.simulator.prompts import PromptLibrary

if TYPE_CHECKING:
    from app.simulator.runner import Generation


@dataclass(frozen=True, slots=True)
class SimulatorConfig:
    """Pacing and size; a response reads it once, when it starts."""

    tokens_per_second: float = 0.0
    first_token_delay_ms: float = 0.0
    output_tokens: int | None = None

    def to_json(self) -> JsonObject:
        return {
            "tokens_per_second": self.tokens_per_second,
            "first_token_delay_ms": self.first_token_delay_ms,
            "output_tokens": self.output_tokens,
        }


class RecordedRequest(NamedTuple):
    """A tuple of strings and bytes: the collector stops tracking it, where the process keeps every one."""

    method: str
    path: str
    query_string: bytes
    body: bytes

    def to_json(self) -> JsonObject:
        # Parsed only when asked for, to keep the hot path to an append.
        try:
            body = orjson.loads(self.body) if self.body else None
        except orjson.JSONDecodeError:
            body = None
        query = dict(parse_qsl(self.query_string.decode("latin-1"), keep_blank_values=True))
        return {"method": self.method, "path": self.path, "query": query, "body": body}


@dataclass(slots=True)
class CachedPrefix:
    """What an earlier response on a conversation already processed, for `cached_tokens`."""

    instructions_key: int
    tokens: int


@dataclass(slots=True)
class StoredConversation:
    id: str
    created_at: int
    metadata: dict[str, str]
    items: ConversationItems = field(default_factory=ConversationItems)
    locked_by: str | None = None
    cached_prefix: CachedPrefix | None = None

    def to_json(self) -> JsonObject:
        return {"id": self.id, "object": "conversation", "created_at": self.created_at, "metadata": self.metadata}


class EventLog:
    """Every frame of a background response, so readers can join at any sequence number."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.closed = False
        self._changed = asyncio.Event()

    def extend(self, frames: list[bytes]) -> None:
        self.frames.extend(frames)
        self._notify()

    def close(self) -> None:
        self.closed = True
        self._notify()

    def _notify(self) -> None:
        # set() wakes every current waiter; clearing at once re-arms the event for the next append.
        self._changed.set()
        self._changed.clear()

    async def follow(self, start: int) -> AsyncIterator[tuple[int, list[bytes]]]:
        """(position, frames) from frame `start` on, live until the log is closed."""
        cursor = start
        while True:
            if cursor < len(self.frames):
                frames = self.frames[cursor:]
                yield cursor, frames
                cursor += len(frames)
            elif self.closed:
                return
            else:
                await self._changed.wait()


class ResponseRecord:
    """One stored response: live while it is produced, then settled into what stays for the process's life.

    A finished response keeps its final Response object as JSON (decoded when asked for) and its history as
    a prefix of its conversation's items: a few objects, not the ~35 tracked ones (the generation with its
    plan, the Response's nested dicts, a copy of the history) that every full collection walked, and that
    made the simulator's collections grow with every response it had served.
    """

    __slots__ = (
        "_final",
        "background",
        "context",
        "generation",
        "id",
        "input_tokens",
        "instructions_key",
        "log",
        "task",
    )

    def __init__(
        self, *, generation: Generation, context: ResponseContext, input_tokens: int, instructions_key: int
    ) -> None:
        response = generation.response
        self.id = str(response["id"])
        self.background = bool(response["background"])
        self.generation: Generation | None = generation
        self.context = context
        self.input_tokens = input_tokens
        self.instructions_key = instructions_key
        self.log: EventLog | None = None
        self.task: asyncio.Task[None] | None = None
        self._final = b""

    def settle(self) -> None:
        """Drop the generation, keeping its final Response; called once it has finished."""
        generation = self.generation
        if generation is not None and generation.finished:
            self._final = orjson.dumps(generation.snapshot())
            self.generation = None

    def snapshot(self) -> JsonObject:
        """The Response as it stands (a new object each time once it is settled)."""
        if self.generation is not None:
            return self.generation.snapshot()
        return cast(JsonObject, orjson.loads(self._final))

    def output(self) -> list[JsonObject]:
        return cast(list[JsonObject], self.snapshot()["output"])


@dataclass(frozen=True, slots=True)
class ResponseContext:
    """The items a response was given: the history before its input, and its input (as JSON)."""

    history: ItemsPrefix
    input: bytes

    def items(self) -> list[JsonObject]:
        return [*self.history.decoded(), *orjson.loads(self.input)]


class SimulatorState:
    def __init__(self, prompts: PromptLibrary) -> None:
        self.prompts = prompts
        self.config = SimulatorConfig()
        self.faults: deque[Fault] = deque()
        self.requests: list[RecordedRequest] = []
        self.conversations: dict[str, StoredConversation] = {}
        self.responses: dict[str, ResponseRecord] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def next_fault(self) -> Fault | None:
        return self.faults.popleft() if self.faults else None

    def create_conversation(self, metadata: dict[str, str], items: list[JsonObject]) -> StoredConversation:
        conversation = StoredConversation(
            id=new_id("conv"), created_at=int(time.time()), metadata=metadata, items=ConversationItems(items)
        )
        self.conversations[conversation.id] = conversation
        return conversation

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run work that outlives the request (background responses, the rest of a cut stream)."""
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def reset(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        self._tasks.clear()
        self.config = SimulatorConfig()
        self.faults.clear()
        self.requests.clear()
        self.conversations.clear()
        self.responses.clear()
