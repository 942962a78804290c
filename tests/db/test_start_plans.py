"""A turn's start touches the rows of its own session and user, however many there are (Postgres).

The start statements are planned by Postgres from its estimates; a wrong one turns an index lookup into a
scan of a whole table, paid at every turn's start and growing with the deployment. Each start statement is
run here under EXPLAIN ANALYZE (in a transaction rolled back) against a database of thousands of sessions,
with the parameters the repository sends, and its plan must not scan a table.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.driver import CompiledFor
from app.db.engine import build_engine
from app.db.models import Turn
from app.repositories import turns as turns_repo
from tests.databases import postgres_database

USERS, SESSIONS_PER_USER, TURNS_OF_THE_USER = 2_000, 3, 400
NOW = dt.datetime.now(dt.UTC)
POPULATE = [
    "INSERT INTO users (id, name, created_at) SELECT 'usr_' || g, 'user ' || g, now() FROM generate_series(1, :users) g",
    "INSERT INTO sessions (id, user_id, conversation_id, metadata, created_at, updated_at, turn_count, total_cost_usd)"
    " SELECT 'ses_' || g, 'usr_' || ((g - 1) / :sessions_of_user + 1), 'conv_' || g, '{}', now(), now(), 0, 0"
    " FROM generate_series(1, :sessions) g",
    # The user of the start has a history: turns that ended, in the last minute and before.
    "INSERT INTO turns (id, session_id, user_id, status, input, request, metadata, output_text, response_ids,"
    " created_at) SELECT 'turn_' || g, 'ses_' || (g % :sessions_of_user + 1), 'usr_1', 'completed',"
    " '\"hi\"', '{}', '{}', '', '[]', now() - g * interval '10 seconds' FROM generate_series(1, :turns) g",
    "ANALYZE",
]


@pytest.fixture(scope="module")
async def engine() -> AsyncIterator[AsyncEngine]:
    async with postgres_database() as url:
        engine = build_engine(url, pool_size=1)
        async with engine.begin() as connection:
            for statement in POPULATE:
                await connection.execute(
                    text(statement),
                    {
                        "users": USERS,
                        "sessions": USERS * SESSIONS_PER_USER,
                        "sessions_of_user": SESSIONS_PER_USER,
                        "turns": TURNS_OF_THE_USER,
                    },
                )
        try:
            yield engine
        finally:
            await engine.dispose()


def _new_turn() -> tuple[Turn, dict[str, Any]]:
    turn = Turn(
        id="turn_new",
        session_id="ses_1",
        user_id="usr_1",
        status="in_progress",
        input="hello",
        request={"model": "gpt-4.1-mini", "input": "hello"},
        metadata_={},
        output_text="",
        response_ids=[],
        idempotency_key=None,
        request_fingerprint=None,
        runner_id="runner_test",
        created_at=NOW,
    )
    message = {
        "id": "msg_new",
        "session_id": "ses_1",
        "turn_id": "turn_new",
        "role": "user",
        "content": "hello",
        "status": "completed",
        "created_at": NOW,
    }
    return turn, message


def _counted_parameters() -> dict[str, Any]:
    turn, message = _new_turn()
    # As `start_counted_turn` builds them, with the default limits.
    return turns_repo._guarded_start_parameters(
        turn,
        message,
        session_key=turn.session_id,
        body_for_session=True,
        since=NOW - dt.timedelta(minutes=1),
        month="2026-12",
        max_in_flight=4,
        max_recent=30,
        default_budget=None,
    )


def _plain_parameters() -> dict[str, Any]:
    turn, message = _new_turn()
    return turns_repo._guarded_start_parameters(turn, message, session_key=turn.session_id)


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


async def _executed_plan(engine: AsyncEngine, statement: CompiledFor, parameters: dict[str, Any]) -> dict[str, Any]:
    """The statement's plan as it ran (EXPLAIN ANALYZE), its writes rolled back."""
    compiled = statement.on(engine.dialect)
    async with engine.connect() as connection:
        raw = (await connection.get_raw_connection()).driver_connection
        assert raw is not None
        transaction = raw.transaction()
        await transaction.start()
        try:
            explained = await raw.fetchval(
                f"EXPLAIN (ANALYZE, FORMAT JSON) {compiled.sql}", *compiled.arguments(parameters)
            )
        finally:
            await transaction.rollback()
    # SQLAlchemy's asyncpg connections decode JSON results.
    plan: dict[str, Any] = explained[0]["Plan"]
    return plan


@pytest.mark.parametrize(
    ("statement", "parameters"),
    [
        pytest.param(turns_repo.START_COUNTED_TURN_ON_DRIVER, _counted_parameters, id="counted"),
        pytest.param(turns_repo.START_PLAIN_TURN_ON_DRIVER, _plain_parameters, id="plain"),
    ],
)
async def test_a_start_reads_no_table_whole(engine: AsyncEngine, statement: CompiledFor, parameters: Any) -> None:
    plan = await _executed_plan(engine, statement, parameters())
    nodes = list(_nodes(plan))
    scanned = {node.get("Relation Name") for node in nodes if node["Node Type"] == "Seq Scan"}
    assert scanned == set(), f"a start scans {scanned} ({USERS * SESSIONS_PER_USER} sessions)"
    # It did start the turn: the session's counter update found its one row.
    updates = [node for node in nodes if node["Node Type"] == "ModifyTable" and node.get("Relation Name") == "sessions"]
    assert [node["Actual Rows"] for node in updates] == [1]
