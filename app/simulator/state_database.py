"""A simulator's conversations and finished responses in a SQL database, so they outlive its process.

Memory stays the working copy: a change is made there first and queued here, and one writer task applies
whatever has queued up in one short transaction, in order. A request never waits for the database, and a turn
costs one transaction (its new items and its final Response), not one per event. A crash loses what was still
queued (and responses still running); `close` writes it all first. Ids memory does not hold are looked up here
(`load_conversation`, `load_response`): after a restart, state comes back one id at a time as it is asked for.

The tables are the simulator's own (their own MetaData, created at `open`), not part of Parley's schema or its
Alembic chain. Items and Responses are kept as the JSON text the simulator serves, never re-encoded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    delete,
    select,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.sql.expression import Executable

logger = logging.getLogger(__name__)

metadata = MetaData()

conversations_table = Table(
    "simulator_conversations",
    metadata,
    Column("id", String, primary_key=True),
    Column("created_at", BigInteger, nullable=False),
    Column("metadata", Text, nullable=False),
    # What the latest response on it processed, for the next one's `cached_tokens`.
    Column("cached_instructions_key", BigInteger),
    Column("cached_tokens", BigInteger),
)
conversation_items_table = Table(
    "simulator_conversation_items",
    metadata,
    Column("conversation_id", String, primary_key=True),
    # Counts up per conversation and is never reused, so deleting an item leaves the order of the rest.
    Column("position", Integer, primary_key=True, autoincrement=False),
    Column("item_id", String, nullable=False),
    Column("item", Text, nullable=False),
)
responses_table = Table(
    "simulator_responses",
    metadata,
    Column("id", String, primary_key=True),
    Column("response", Text, nullable=False),
    Column("input", Text, nullable=False),
    # The history it was given: the first `history_length` items of its conversation, or (a
    # `previous_response_id` chain) the items themselves.
    Column("history_conversation_id", String),
    Column("history_length", Integer, nullable=False),
    Column("history", Text),
    Column("input_tokens", BigInteger, nullable=False),
    Column("instructions_key", BigInteger, nullable=False),
    Column("background", Boolean, nullable=False),
)
files_table = Table(
    "simulator_files",
    metadata,
    Column("id", String, primary_key=True),
    # The FileObject as served, and the file's bytes.
    Column("file", Text, nullable=False),
    Column("content", LargeBinary, nullable=False),
)
TABLE_NAMES = frozenset(metadata.tables)

EncodedItem = tuple[str, bytes]
_Write = tuple[Executable, Any]


@dataclass(frozen=True, slots=True)
class ConversationRow:
    id: str
    created_at: int
    metadata: bytes
    items: list[bytes]
    next_position: int
    cached_prefix: tuple[int, int] | None


@dataclass(frozen=True, slots=True)
class ResponseRow:
    id: str
    response: bytes
    input: bytes
    history_conversation_id: str | None
    history_length: int
    history: bytes | None
    input_tokens: int
    instructions_key: int
    background: bool


class StateDatabase:
    def __init__(self, database_url: str) -> None:
        self._url = database_url
        self._engine: AsyncEngine | None = None
        self._pending: deque[_Write | asyncio.Future[None]] = deque()
        self._wake: asyncio.Event | None = None
        self._writer: asyncio.Task[None] | None = None
        self._tables_ready = False

    async def open(self) -> None:
        """Connect, create the tables that are missing, and start writing what is queued.

        A database that cannot be reached yet does not stop the server (Parley's own `/readyz` says so): the
        simulator works from memory and creates its tables when the database answers.
        """
        self._engine = _build_engine(self._url)
        await self._ensure_tables()
        self._wake = asyncio.Event()
        self._writer = asyncio.get_running_loop().create_task(self._write_forever())
        if self._pending:
            self._wake.set()

    async def close(self) -> None:
        """Write everything queued, then disconnect."""
        if self._writer is not None:
            await self.flush()
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
            self._writer = None
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None

    async def flush(self) -> None:
        """Return once everything queued so far is written (or its write has failed and been logged)."""
        if self._writer is None or self._writer.done():
            return
        written: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._enqueue(written)
        await written

    # -- writes (queued; each keeps its place in line) -----------------------------------------------------

    def insert_conversation(
        self, *, conversation_id: str, created_at: int, metadata: bytes, items: list[EncodedItem]
    ) -> None:
        self._enqueue(
            (
                conversations_table.insert(),
                {"id": conversation_id, "created_at": created_at, "metadata": metadata.decode()},
            )
        )
        self.append_items(conversation_id=conversation_id, first_position=0, items=items)

    def append_items(
        self,
        *,
        conversation_id: str,
        first_position: int,
        items: list[EncodedItem],
        cached_prefix: tuple[int, int] | None = None,
    ) -> None:
        if items:
            rows = [
                {"conversation_id": conversation_id, "position": position, "item_id": item_id, "item": item.decode()}
                for position, (item_id, item) in enumerate(items, start=first_position)
            ]
            self._enqueue((conversation_items_table.insert(), rows))
        if cached_prefix is not None:
            instructions_key, tokens = cached_prefix
            statement = (
                update(conversations_table)
                .where(conversations_table.c.id == conversation_id)
                .values(cached_instructions_key=instructions_key, cached_tokens=tokens)
            )
            self._enqueue((statement, None))

    def set_metadata(self, *, conversation_id: str, metadata: bytes) -> None:
        statement = (
            update(conversations_table)
            .where(conversations_table.c.id == conversation_id)
            .values(metadata=metadata.decode())
        )
        self._enqueue((statement, None))

    def delete_item(self, *, conversation_id: str, item_id: str) -> None:
        items = conversation_items_table.c
        statement = delete(conversation_items_table).where(
            items.conversation_id == conversation_id, items.item_id == item_id
        )
        self._enqueue((statement, None))

    def delete_conversation(self, conversation_id: str) -> None:
        """The conversation goes; its items stay (as on the real service), for the responses that ran on it."""
        self._enqueue((delete(conversations_table).where(conversations_table.c.id == conversation_id), None))

    def insert_response(self, row: ResponseRow) -> None:
        values = {
            "id": row.id,
            "response": row.response.decode(),
            "input": row.input.decode(),
            "history_conversation_id": row.history_conversation_id,
            "history_length": row.history_length,
            "history": None if row.history is None else row.history.decode(),
            "input_tokens": row.input_tokens,
            "instructions_key": row.instructions_key,
            "background": row.background,
        }
        self._enqueue((responses_table.insert(), values))

    def delete_response(self, response_id: str) -> None:
        self._enqueue((delete(responses_table).where(responses_table.c.id == response_id), None))

    def insert_file(self, *, file_id: str, file: bytes, content: bytes) -> None:
        self._enqueue((files_table.insert(), {"id": file_id, "file": file.decode(), "content": content}))

    def delete_file(self, file_id: str) -> None:
        self._enqueue((delete(files_table).where(files_table.c.id == file_id), None))

    def clear(self) -> None:
        for table in (conversation_items_table, conversations_table, responses_table, files_table):
            self._enqueue((delete(table), None))

    # -- reads ---------------------------------------------------------------------------------------------

    async def load_conversation(self, conversation_id: str) -> ConversationRow | None:
        if self._engine is None or not await self._ensure_tables():
            return None
        async with self._engine.connect() as connection:
            found = (
                await connection.execute(select(conversations_table).where(conversations_table.c.id == conversation_id))
            ).first()
            if found is None:
                return None
            rows = await _items_of(connection, conversation_id)
        cached = None
        if found.cached_instructions_key is not None and found.cached_tokens is not None:
            cached = (int(found.cached_instructions_key), int(found.cached_tokens))
        return ConversationRow(
            id=found.id,
            created_at=int(found.created_at),
            metadata=found.metadata.encode(),
            items=[item.encode() for _, item in rows],
            next_position=rows[-1][0] + 1 if rows else 0,
            cached_prefix=cached,
        )

    async def load_items(self, conversation_id: str) -> list[bytes]:
        """The items of a conversation, also of one that was deleted, in order."""
        if self._engine is None or not await self._ensure_tables():
            return []
        async with self._engine.connect() as connection:
            return [item.encode() for _, item in await _items_of(connection, conversation_id)]

    async def load_response(self, response_id: str) -> ResponseRow | None:
        if self._engine is None or not await self._ensure_tables():
            return None
        async with self._engine.connect() as connection:
            found = (
                await connection.execute(select(responses_table).where(responses_table.c.id == response_id))
            ).first()
        if found is None:
            return None
        return ResponseRow(
            id=found.id,
            response=found.response.encode(),
            input=found.input.encode(),
            history_conversation_id=found.history_conversation_id,
            history_length=int(found.history_length),
            history=None if found.history is None else found.history.encode(),
            input_tokens=int(found.input_tokens),
            instructions_key=int(found.instructions_key),
            background=bool(found.background),
        )

    async def load_file(self, file_id: str) -> tuple[bytes, bytes] | None:
        """A file's FileObject (JSON) and its bytes."""
        if self._engine is None or not await self._ensure_tables():
            return None
        async with self._engine.connect() as connection:
            found = (await connection.execute(select(files_table).where(files_table.c.id == file_id))).first()
        return None if found is None else (found.file.encode(), bytes(found.content))

    # -- the writer ----------------------------------------------------------------------------------------

    def _enqueue(self, entry: _Write | asyncio.Future[None]) -> None:
        self._pending.append(entry)
        if self._wake is not None:
            self._wake.set()

    async def _write_forever(self) -> None:
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch = list(self._pending)
                self._pending.clear()
                await self._write(batch)

    async def _write(self, batch: list[_Write | asyncio.Future[None]]) -> None:
        writes = [entry for entry in batch if not isinstance(entry, asyncio.Future)]
        if writes and self._engine is not None and await self._ensure_tables():
            try:
                async with self._engine.begin() as connection:
                    for statement, parameters in writes:
                        await connection.execute(statement, parameters)
            except Exception:
                # The simulator goes on from memory (only a restart would miss these changes), and the writer
                # goes on with the next batch.
                logger.exception("simulator.state_write_failed", extra={"writes": len(writes)})
        for entry in batch:
            if isinstance(entry, asyncio.Future) and not entry.done():
                entry.set_result(None)

    async def _ensure_tables(self) -> bool:
        """Whether the tables are there, creating them first if the database has not been reached yet."""
        if self._tables_ready or self._engine is None:
            return self._tables_ready
        try:
            await _create_tables(self._engine)
        except (OSError, DBAPIError) as error:
            logger.warning(
                "simulator.state_database_unreachable: the simulator keeps its state in memory until %s answers (%s)",
                self._engine.url.render_as_string(hide_password=True),
                type(error).__name__,
            )
            return False
        self._tables_ready = True
        return True


async def _items_of(connection: AsyncConnection, conversation_id: str) -> list[tuple[int, str]]:
    """(position, item JSON), in order."""
    items = conversation_items_table.c
    statement = select(items.position, items.item).where(items.conversation_id == conversation_id)
    return [(row.position, row.item) for row in await connection.execute(statement.order_by(items.position))]


def _build_engine(database_url: str) -> AsyncEngine:
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        # Another engine (Parley's) may hold the file's write lock for a moment: wait for it, as Parley does.
        return create_async_engine(database_url, connect_args={"timeout": 30})
    # One writer and the odd lookup after a restart.
    return create_async_engine(database_url, pool_size=2, max_overflow=2)


async def _create_tables(engine: AsyncEngine) -> None:
    try:
        async with engine.begin() as connection:
            await connection.run_sync(metadata.create_all)
    except DBAPIError:
        # Two processes starting on one Postgres database at once can both see a table missing; the loser's
        # CREATE fails. Look again: the tables are there now.
        async with engine.begin() as connection:
            await connection.run_sync(metadata.create_all)
