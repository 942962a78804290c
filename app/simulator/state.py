"""Everything one simulator instance remembers, kept in memory on its app (never in module globals), and, when
it has a state database, written there too and read back from it after a restart."""

from __future__ import annotations

import asyncio
import secrets
import string
import time
from collections import deque
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, cast
from urllib.parse import parse_qsl

import orjson

from app.simulator.conversation_items import EMPTY_PREFIX, ConversationItems, ItemsPrefix
from app.simulator.faults import Fault
from app.simulator.ids import new_id
from app.simulator.json_types import JsonObject
from app.simulator.prompts import PromptLibrary
from app.simulator.state_database import ConversationRow, ResponseRow, StateDatabase

if TYPE_CHECKING:
    from app.simulator.runner import Generation


# "A model's pace": a few hundred milliseconds to the first token, then tens of tokens a second.
MODEL_TOKENS_PER_SECOND = 50.0
MODEL_FIRST_TOKEN_DELAY_MS = 400.0
# How long a background response's events can be streamed again after it ended ("about 10 minutes", OpenAI's
# background guide); its Response object stays (it was stored).
BACKGROUND_RETENTION_S = 600.0


@dataclass(frozen=True, slots=True)
class SimulatorConfig:
    """Pacing and size; a response reads it once, when it starts."""

    tokens_per_second: float = 0.0
    first_token_delay_ms: float = 0.0
    output_tokens: int | None = None

    @classmethod
    def at_speed(cls, speed: str | float) -> SimulatorConfig:
        """`"instant"`: no delay at all; `"model"`: a model's pace; a number: that many times a model's pace."""
        if speed == "instant":
            return cls()
        factor = 1.0 if speed == "model" else float(speed)
        if factor <= 0:
            raise ValueError(f"a simulator speed is 'model', 'instant' or a positive number, not {speed!r}")
        return cls(
            tokens_per_second=MODEL_TOKENS_PER_SECOND * factor, first_token_delay_ms=MODEL_FIRST_TOKEN_DELAY_MS / factor
        )

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
    next_position: int = 0
    """Where the next item goes in the state database (positions only grow: a deleted item leaves a gap)."""

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
        self,
        *,
        response_id: str,
        background: bool,
        generation: Generation | None,
        final: bytes = b"",
        context: ResponseContext,
        input_tokens: int,
        instructions_key: int,
    ) -> None:
        self.id = response_id
        self.background = background
        self.generation = generation
        self.context = context
        self.input_tokens = input_tokens
        self.instructions_key = instructions_key
        self.log: EventLog | None = None
        self.task: asyncio.Task[None] | None = None
        self._final = final

    @classmethod
    def for_generation(
        cls, generation: Generation, *, context: ResponseContext, input_tokens: int, instructions_key: int
    ) -> ResponseRecord:
        response = generation.response
        return cls(
            response_id=str(response["id"]),
            background=bool(response["background"]),
            generation=generation,
            context=context,
            input_tokens=input_tokens,
            instructions_key=instructions_key,
        )

    @property
    def known(self) -> bool:
        """A non-background response is stored once it has finished; until then its id is unknown (404)."""
        return self.background or self.generation is None or self.generation.finished

    def drop_events(self) -> None:
        """The background retention is over: its events can no longer be streamed (memory is given back)."""
        log = self.log
        if log is not None and log.closed:
            self.log = None

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

    def to_row(self) -> ResponseRow:
        """A settled response as the state database keeps it."""
        history = self.context.history
        in_conversation = self.context.conversation_id is not None
        return ResponseRow(
            id=self.id,
            response=self._final,
            input=self.context.input,
            history_conversation_id=self.context.conversation_id,
            history_length=history.length,
            history=None if in_conversation else b"[" + b",".join(history.encoded_items()) + b"]",
            input_tokens=self.input_tokens,
            instructions_key=self.instructions_key,
            background=self.background,
        )


@dataclass(frozen=True, slots=True)
class ResponseContext:
    """The items a response was given: the history before its input, and its input (as JSON)."""

    history: ItemsPrefix
    input: bytes
    conversation_id: str | None = None
    """The conversation whose items `history` is a prefix of, if any."""

    def items(self) -> list[JsonObject]:
        return [*self.history.decoded(), *orjson.loads(self.input)]


class StoredFile(NamedTuple):
    """An uploaded file: its FileObject as served, and its bytes."""

    file: JsonObject
    content: bytes


_FILE_ID_ALPHABET = string.ascii_letters + string.digits


class SimulatorState:
    """The working copy is in memory. With a `database`, every change is also queued for it, and an id that
    memory does not hold is looked for there (`find_conversation`, `find_response`) before it counts as unknown.
    """

    def __init__(
        self,
        prompts: PromptLibrary,
        *,
        config: SimulatorConfig | None = None,
        database: StateDatabase | None = None,
        background_retention_s: float = BACKGROUND_RETENTION_S,
        zero_data_retention: bool = False,
    ) -> None:
        self.prompts = prompts
        self.background_retention_s = background_retention_s
        # An organisation with zero data retention: background responses are refused.
        self.zero_data_retention = zero_data_retention
        self.default_config = config or SimulatorConfig()
        self.config = self.default_config
        self.database = database
        self.faults: deque[Fault] = deque()
        self.requests: list[RecordedRequest] = []
        self.conversations: dict[str, StoredConversation] = {}
        self.responses: dict[str, ResponseRecord] = {}
        self.files: dict[str, StoredFile] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        # Deleted here, perhaps not yet in the database: never to be read back from it.
        self._deleted: set[str] = set()

    def next_fault(self) -> Fault | None:
        return self.faults.popleft() if self.faults else None

    # -- files -----------------------------------------------------------------------------------------------

    async def find_file(self, file_id: str) -> StoredFile | None:
        stored = self.files.get(file_id)
        if stored is not None or self.database is None or file_id in self._deleted:
            return stored
        row = await self.database.load_file(file_id)
        if row is None:
            return None
        return self.files.setdefault(file_id, StoredFile(orjson.loads(row[0]), row[1]))

    def create_file(self, *, filename: str, purpose: str, content: bytes) -> StoredFile:
        file_id = "file-" + "".join(secrets.choice(_FILE_ID_ALPHABET) for _ in range(22))
        stored = StoredFile(
            {
                "id": file_id,
                "object": "file",
                "bytes": len(content),
                "created_at": int(time.time()),
                "filename": filename,
                "purpose": purpose,
                "status": "processed",
                "expires_at": None,
                "status_details": None,
            },
            content,
        )
        self.files[file_id] = stored
        if self.database is not None:
            self.database.insert_file(file_id=file_id, file=orjson.dumps(stored.file), content=content)
        return stored

    def delete_file(self, file_id: str) -> None:
        self.files.pop(file_id, None)
        if self.database is not None:
            self._deleted.add(file_id)
            self.database.delete_file(file_id)

    # -- conversations -------------------------------------------------------------------------------------

    async def find_conversation(self, conversation_id: str) -> StoredConversation | None:
        conversation = self.conversations.get(conversation_id)
        if conversation is not None or self.database is None or conversation_id in self._deleted:
            return conversation
        row = await self.database.load_conversation(conversation_id)
        if row is None:
            return None
        # Another request may have read it back meanwhile: the first copy wins.
        return self.conversations.setdefault(conversation_id, _restored_conversation(row))

    def create_conversation(self, metadata: dict[str, str], items: list[JsonObject]) -> StoredConversation:
        conversation = StoredConversation(id=new_id("conv"), created_at=int(time.time()), metadata=metadata)
        added = conversation.items.extend(items)
        self.conversations[conversation.id] = conversation
        if self.database is not None:
            conversation.next_position = len(added)
            self.database.insert_conversation(
                conversation_id=conversation.id,
                created_at=conversation.created_at,
                metadata=orjson.dumps(metadata),
                items=added,
            )
        return conversation

    def set_metadata(self, conversation: StoredConversation, metadata: dict[str, str]) -> None:
        conversation.metadata = metadata
        if self.database is not None:
            self.database.set_metadata(conversation_id=conversation.id, metadata=orjson.dumps(metadata))

    def append_items(
        self, conversation: StoredConversation, items: list[JsonObject], *, cached_prefix: CachedPrefix | None = None
    ) -> None:
        """Items go on the end (kept as JSON: later changes to the live objects do not reach the copy)."""
        added = conversation.items.extend(items)
        if cached_prefix is not None:
            conversation.cached_prefix = cached_prefix
        if self.database is not None:
            self.database.append_items(
                conversation_id=conversation.id,
                first_position=conversation.next_position,
                items=added,
                cached_prefix=None if cached_prefix is None else (cached_prefix.instructions_key, cached_prefix.tokens),
            )
            conversation.next_position += len(added)

    def remove_item(self, conversation: StoredConversation, item_id: str) -> bool:
        removed = conversation.items.remove(item_id)
        if removed and self.database is not None:
            self.database.delete_item(conversation_id=conversation.id, item_id=item_id)
        return removed

    def delete_conversation(self, conversation: StoredConversation) -> None:
        del self.conversations[conversation.id]
        if self.database is not None:
            self._deleted.add(conversation.id)
            self.database.delete_conversation(conversation.id)

    # -- responses -----------------------------------------------------------------------------------------

    async def find_response(self, response_id: str) -> ResponseRecord | None:
        record = self.responses.get(response_id)
        if record is not None or self.database is None or response_id in self._deleted:
            return record
        row = await self.database.load_response(response_id)
        if row is None:
            return None
        history = EMPTY_PREFIX
        if row.history_conversation_id is not None:
            conversation = await self.find_conversation(row.history_conversation_id)
            if conversation is not None:
                history = conversation.items.prefix(row.history_length)
            else:
                # Deleting a conversation leaves its items: the response keeps its history.
                kept = await self.database.load_items(row.history_conversation_id)
                history = ConversationItems(orjson.loads(item) for item in kept).prefix(row.history_length)
        elif row.history is not None:
            history = ConversationItems(orjson.loads(row.history)).prefix()
        restored = ResponseRecord(
            response_id=row.id,
            background=row.background,
            generation=None,
            final=row.response,
            context=ResponseContext(history, row.input, row.history_conversation_id),
            input_tokens=row.input_tokens,
            instructions_key=row.instructions_key,
        )
        return self.responses.setdefault(response_id, restored)

    async def recall(self, *, conversation_id: str | None, response_id: str | None) -> None:
        """Bring what a new response builds on into memory, if it is only in the database."""
        if conversation_id is not None:
            await self.find_conversation(conversation_id)
        if response_id is not None:
            await self.find_response(response_id)

    def response_finished(self, record: ResponseRecord) -> None:
        """A stored response has settled: from now on it stays as it is, so it is kept for good."""
        if self.database is not None and self.responses.get(record.id) is record:
            self.database.insert_response(record.to_row())

    def forget_response(self, record: ResponseRecord) -> None:
        """A response that ended without being stored (a non-background one whose client left)."""
        if self.responses.get(record.id) is record:
            del self.responses[record.id]

    def retain_events(self, record: ResponseRecord) -> None:
        """A background response has ended: its events stay streamable for the retention period."""
        asyncio.get_running_loop().call_later(self.background_retention_s, record.drop_events)

    def delete_response(self, record: ResponseRecord) -> None:
        self.responses.pop(record.id, None)
        if self.database is not None:
            self._deleted.add(record.id)
            self.database.delete_response(record.id)

    # -- the process ---------------------------------------------------------------------------------------

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run work that outlives the request (background responses, the rest of a cut stream)."""
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def reset(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        self._tasks.clear()
        self.config = self.default_config
        self.faults.clear()
        self.requests.clear()
        self.conversations.clear()
        self.responses.clear()
        self.files.clear()
        if self.database is not None:
            self.database.clear()
            # Written before the next request can look for an id in the database.
            await self.database.flush()
            self._deleted.clear()


def _restored_conversation(row: ConversationRow) -> StoredConversation:
    cached = None if row.cached_prefix is None else CachedPrefix(*row.cached_prefix)
    return StoredConversation(
        id=row.id,
        created_at=row.created_at,
        metadata=orjson.loads(row.metadata),
        items=ConversationItems(orjson.loads(item) for item in row.items),
        cached_prefix=cached,
        next_position=row.next_position,
    )
