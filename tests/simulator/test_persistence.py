"""A simulator with a state database: conversations and finished responses outlive the process (on SQLite and
Postgres), and its tables stay out of Parley's migrations."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import httpx
import openai
import pytest
from alembic import command
from sqlalchemy import inspect
from sqlalchemy.engine import Connection

from app.db.engine import build_engine
from app.db.migrate import alembic_config
from app.simulator import create_simulator_app
from app.simulator.state_database import TABLE_NAMES, StateDatabase
from tests.databases import BACKENDS, database
from tests.servers import serve

INSTRUCTIONS = "You are a test assistant."


@contextmanager
def simulator_on(url: str) -> Iterator[str]:
    with serve(create_simulator_app(state_database_url=url)) as base_url:
        yield base_url


@asynccontextmanager
async def sdk_for(base_url: str) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="sk-test", max_retries=0) as client:
        yield client


@pytest.mark.parametrize("backend", BACKENDS)
async def test_conversations_and_responses_outlive_the_process(backend: str, tmp_path: Path) -> None:
    async with database(backend, tmp_path, migrate=False) as url:
        with simulator_on(url) as base_url:
            async with sdk_for(base_url) as sdk:
                conversation = await sdk.conversations.create(
                    metadata={"topic": "restart"},
                    items=[{"role": "user", "content": "An aside that gets deleted."}],
                )
                first = await sdk.responses.create(
                    model="gpt-4.1-mini",
                    instructions=INSTRUCTIONS,
                    input="First question",
                    conversation=conversation.id,
                )
                stream = await sdk.responses.create(
                    model="gpt-5-mini",
                    instructions=INSTRUCTIONS,
                    input="Second question",
                    conversation=conversation.id,
                    reasoning={"summary": "auto"},
                    stream=True,
                )
                streamed = [event async for event in stream][-1]
                assert streamed.type == "response.completed"
                second = streamed.response
                aside = (await sdk.conversations.items.list(conversation.id, order="asc", limit=1)).data[0]
                await sdk.conversations.items.delete(aside.id, conversation_id=conversation.id)
                await sdk.conversations.update(conversation.id, metadata={"topic": "renamed"})
                chained = await sdk.responses.create(
                    model="gpt-4.1-mini", input="Chained", previous_response_id=first.id
                )
                doomed = await sdk.responses.create(model="gpt-4.1-mini", input="Delete me")
                await sdk.responses.delete(doomed.id)
                gone = await sdk.conversations.create()
                await sdk.conversations.delete(gone.id)
                items_before = [item async for item in sdk.conversations.items.list(conversation.id, order="asc")]

        with simulator_on(url) as base_url:
            async with sdk_for(base_url) as sdk:
                again = await sdk.conversations.retrieve(conversation.id)
                assert again.metadata == {"topic": "renamed"}
                assert again.created_at == conversation.created_at
                items_after = [item async for item in sdk.conversations.items.list(conversation.id, order="asc")]
                assert items_after == items_before
                assert [item.type for item in items_after] == ["message", "message", "message", "reasoning", "message"]

                assert await sdk.responses.retrieve(first.id) == first
                assert await sdk.responses.retrieve(second.id) == second
                assert (await sdk.responses.retrieve(chained.id)).output_text == chained.output_text

                # The conversation goes on where it was, cached prefix included.
                third = await sdk.responses.create(
                    model="gpt-4.1-mini",
                    instructions=INSTRUCTIONS,
                    input="Third question",
                    conversation=conversation.id,
                )
                assert third.usage is not None
                assert second.usage is not None
                assert third.usage.input_tokens_details.cached_tokens == second.usage.input_tokens
                assert len([item async for item in sdk.conversations.items.list(conversation.id)]) == 7
                # A chain goes on from a response of the earlier process, with its history.
                follow_up = await sdk.responses.create(
                    model="gpt-4.1-mini", input="And then?", previous_response_id=chained.id
                )
                assert follow_up.usage is not None
                assert chained.usage is not None
                assert follow_up.usage.input_tokens > chained.usage.input_tokens + chained.usage.output_tokens

                for deleted in (sdk.responses.retrieve(doomed.id), sdk.conversations.retrieve(gone.id)):
                    with pytest.raises(openai.NotFoundError):
                        await deleted
                with pytest.raises(openai.NotFoundError):
                    await sdk.responses.create(model="gpt-4.1-mini", input="Hi", conversation="conv_never")


async def test_a_finished_background_response_survives(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'state.db'}"
    with simulator_on(url) as base_url:
        async with sdk_for(base_url) as sdk:
            stream = await sdk.responses.create(
                model="gpt-4.1-mini", input="In the background", background=True, stream=True
            )
            final = [event async for event in stream][-1]
            assert final.type == "response.completed"

    with simulator_on(url) as base_url:
        async with sdk_for(base_url) as sdk:
            stored = await sdk.responses.retrieve(final.response.id)
            assert stored.status == "completed"
            assert stored.background is True
            assert stored.output_text == final.response.output_text
        async with httpx.AsyncClient(base_url=base_url) as http:
            replay = await http.get(
                f"/v1/responses/{stored.id}", params={"stream": "true"}, headers={"Authorization": "Bearer sk-test"}
            )
            assert replay.status_code == 400
            assert replay.json()["error"]["param"] == "stream"


async def test_a_deleted_conversations_items_stay_for_its_responses(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'state.db'}"
    with simulator_on(url) as base_url:
        async with sdk_for(base_url) as sdk:
            conversation = await sdk.conversations.create(items=[{"role": "user", "content": "A long preamble " * 20}])
            first = await sdk.responses.create(
                model="gpt-4.1-mini", instructions=INSTRUCTIONS, input="Question", conversation=conversation.id
            )
            await sdk.conversations.delete(conversation.id)

    with simulator_on(url) as base_url:
        async with sdk_for(base_url) as sdk:
            with pytest.raises(openai.NotFoundError):
                await sdk.conversations.retrieve(conversation.id)
            assert await sdk.responses.retrieve(first.id) == first
            chained = await sdk.responses.create(
                model="gpt-4.1-mini", instructions=INSTRUCTIONS, input="Next", previous_response_id=first.id
            )
            assert first.usage is not None
            assert chained.usage is not None
            # The chain reads the deleted conversation's items: the preamble, the question and the answer.
            assert chained.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
            assert chained.usage.input_tokens_details.cached_tokens == first.usage.input_tokens


async def test_a_reset_forgets_the_stored_state_too(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'state.db'}"
    with simulator_on(url) as base_url:
        async with sdk_for(base_url) as sdk:
            conversation = await sdk.conversations.create()
            response = await sdk.responses.create(model="gpt-4.1-mini", input="Hi")
        async with httpx.AsyncClient(base_url=base_url) as http:
            assert (await http.post("/_control/reset")).status_code == 200

    with simulator_on(url) as base_url:
        async with sdk_for(base_url) as sdk:
            with pytest.raises(openai.NotFoundError):
                await sdk.conversations.retrieve(conversation.id)
            with pytest.raises(openai.NotFoundError):
                await sdk.responses.retrieve(response.id)


def _tables(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names())


@pytest.mark.parametrize("backend", BACKENDS)
async def test_parleys_migrations_leave_the_simulator_tables_alone(backend: str, tmp_path: Path) -> None:
    async with database(backend, tmp_path) as url:
        state = StateDatabase(url)
        await state.open()
        await state.close()
        engine = build_engine(url)
        try:
            async with engine.connect() as connection:
                assert await connection.run_sync(_tables) >= TABLE_NAMES

                def check(sync_connection: Connection) -> None:
                    config = alembic_config()
                    config.attributes["connection"] = sync_connection
                    command.check(config)  # raises on anything autogenerate would change

                await connection.run_sync(check)
        finally:
            await engine.dispose()
