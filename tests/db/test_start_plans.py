"""A turn's start touches the rows of its own session and user, however many there are (Postgres).

The start's statements are planned by Postgres from its estimates; a wrong one turns an index lookup into a
scan of a whole table, paid at every turn's start and growing with the deployment. Each statement of a start
that reads or updates existing rows is run here under EXPLAIN ANALYZE (in a transaction rolled back) against
a database of thousands of sessions, and its plan must not scan a table.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.engine import build_engine
from app.repositories import session_repository as sessions_repo
from app.repositories import turn_repository as turns_repo
from tests.databases import postgres_database

USERS, SESSIONS_PER_USER, TURNS_OF_THE_USER = 2_000, 3, 400
NOW = dt.datetime.now(dt.UTC)
POPULATE = [
    "INSERT INTO users (id, source, name, created_at)"
    " SELECT 'usr_' || g, 'api_key', 'user ' || g, now() FROM generate_series(1, :users) g",
    "INSERT INTO sessions (id, user_id, conversation_id, metadata, created_at, updated_at, turn_count, total_cost_usd)"
    " SELECT 'ses_' || g, 'usr_' || ((g - 1) / :sessions_of_user + 1), 'conv_' || g, '{}', now(), now(), 0, 0"
    " FROM generate_series(1, :sessions) g",
    # The user of the start has a history: turns that ended, in the last minute and before.
    "INSERT INTO turns (id, session_id, user_id, status, input, request, metadata, output_text, response_ids,"
    " created_at) SELECT 'turn_' || g, 'ses_' || (g % :sessions_of_user + 1), 'usr_1', 'completed',"
    " '\"hi\"', '{}', '{}', '', '[]', now() - g * interval '10 seconds' FROM generate_series(1, :turns) g",
    # Every other user has a history too: the start's user is a few hundred rows among tens of thousands (with
    # only theirs, reading the whole small table would be the right plan, and the test would say nothing).
    "INSERT INTO turns (id, session_id, user_id, status, input, request, metadata, output_text, response_ids,"
    " created_at) SELECT 'turn_o' || g, 'ses_' || s, 'usr_' || ((s - 1) / CAST(:sessions_of_user AS integer) + 1),"
    " 'completed', '\"hi\"', '{}', '{}', '', '[]', now() - g * interval '1 second'"
    " FROM generate_series(1, 20 * CAST(:users AS integer)) g,"
    " LATERAL (SELECT g % (CAST(:sessions AS integer) - CAST(:sessions_of_user AS integer))"
    " + CAST(:sessions_of_user AS integer) + 1 AS s) other_session",
    # The ledger: rows of every session (a budgeted start reads its session's last one).
    "INSERT INTO usage_records (id, response_id, turn_id, session_id, user_id, status, input_tokens, output_tokens,"
    " created_at) SELECT 'usage_' || lpad(g::text, 8, '0'), 'resp_' || g, 'turn_' || (g % :turns + 1),"
    " 'ses_' || (g % :sessions + 1), 'usr_1', 'completed', 10, 20, now() FROM generate_series(1, 5 * :sessions) g",
    "INSERT INTO user_monthly_spend (user_id, month, cost_usd, updated_at)"
    " SELECT 'usr_' || g, '2026-' || lpad(m::text, 2, '0'), 0.01, now()"
    " FROM generate_series(1, :users) g, generate_series(1, 12) m",
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


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


async def _executed_plan(engine: AsyncEngine, statement: Any, parameters: dict[str, Any]) -> dict[str, Any]:
    """The statement's plan as it ran (EXPLAIN ANALYZE), its writes rolled back."""
    compiled = statement.compile(dialect=engine.dialect)
    values = compiled.construct_params(parameters)
    async with engine.connect() as connection:
        raw = (await connection.get_raw_connection()).driver_connection
        assert raw is not None
        transaction = raw.transaction()
        await transaction.start()
        try:
            explained = await raw.fetchval(
                f"EXPLAIN (ANALYZE, FORMAT JSON) {compiled.string}", *(values[name] for name in compiled.positiontup)
            )
        finally:
            await transaction.rollback()
    # SQLAlchemy's asyncpg connections decode JSON results.
    plan: dict[str, Any] = explained[0]["Plan"]
    return plan


@pytest.mark.parametrize(
    ("statement", "parameters", "rows"),
    [
        pytest.param(
            sessions_repo.SESSION_FOR_TURN_LOCKED, {"session_key": "ses_1", "user_key": "usr_1"}, 1, id="session"
        ),
        pytest.param(
            turns_repo.LIMIT_COUNTS,
            {"user_key": "usr_1", "since": NOW - dt.timedelta(minutes=1), "month": "2026-12"},
            1,
            id="limit-counts",
        ),
        pytest.param(turns_repo.COUNT_SESSION_TURN, {"session_key": "ses_1", "at": NOW}, 1, id="session-count"),
        pytest.param(turns_repo.LAST_USAGE, {"session_key": "ses_1"}, 1, id="session-last-usage"),
    ],
)
async def test_a_start_reads_no_table_whole(
    engine: AsyncEngine, statement: Any, parameters: dict[str, Any], rows: int
) -> None:
    plan = await _executed_plan(engine, statement, parameters)
    nodes = list(_nodes(plan))
    scanned = {node.get("Relation Name") for node in nodes if node["Node Type"] == "Seq Scan"}
    assert scanned == set(), f"a start scans {scanned} ({USERS * SESSIONS_PER_USER} sessions)"
    # It found what a start looks for: the session, the counts, the session's row to count the turn on.
    assert plan["Actual Rows"] == rows or plan["Node Type"] == "ModifyTable"
