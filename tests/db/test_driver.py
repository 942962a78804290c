"""Statements run on the driver's connection (`app.db.driver`) behave as `execute` would: the same values
stored and read back, and the same errors, so a duplicate is still a 409 and a dropped connection a 503."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import cast

import pytest
from sqlalchemy import Table, bindparam, insert, select, text
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.driver import CompiledFor, driver_connection
from app.db.engine import build_engine
from app.db.models import ChatSession, User
from tests.databases import postgres_database

NOW = dt.datetime(2026, 12, 2, 12, 30, tzinfo=dt.UTC)

SESSIONS = cast(Table, ChatSession.__table__)
NEW_SESSION = CompiledFor(
    insert(SESSIONS)
    .values(
        id=bindparam("id"),
        user_id=bindparam("user_id"),
        conversation_id=bindparam("conversation_id"),
        metadata=bindparam("metadata"),
        prompt=bindparam("prompt"),
        total_cost_usd=bindparam("cost"),
        created_at=bindparam("at"),
        updated_at=bindparam("at"),
        turn_count=0,
    )
    .returning(SESSIONS.c.id, SESSIONS.c.prompt, SESSIONS.c.total_cost_usd, SESSIONS.c.created_at)
)
SESSION_OF_USER = CompiledFor(
    select(ChatSession.id, User.name)
    .join(User, User.id == ChatSession.user_id)
    .where(ChatSession.user_id == bindparam("user_id"))
)


@pytest.fixture
async def engine() -> AsyncIterator[AsyncEngine]:
    async with postgres_database() as url:
        engine = build_engine(url, pool_size=1)
        async with engine.begin() as connection:
            await connection.execute(text("INSERT INTO users (id, name, created_at) VALUES ('usr_1', 'ada', now())"))
        try:
            yield engine
        finally:
            await engine.dispose()


def _session(session_id: str, conversation_id: str, prompt: dict[str, object] | None) -> dict[str, object]:
    return {
        "id": session_id,
        "user_id": "usr_1",
        "conversation_id": conversation_id,
        "metadata": {},
        "prompt": prompt,
        "cost": Decimal("0.0000012345"),
        "at": NOW,
    }


async def test_values_round_trip_as_through_execute(engine: AsyncEngine) -> None:
    async with driver_connection(engine) as driver:
        row = await driver.fetchrow(NEW_SESSION, _session("ses_1", "conv_1", {"id": "pmpt_1", "version": "2"}))
        unset = await driver.fetchrow(NEW_SESSION, _session("ses_2", "conv_2", None))
        missing = await driver.fetchrow(SESSION_OF_USER, {"user_id": "usr_nobody"})
    assert row == {
        "id": "ses_1",
        "prompt": {"id": "pmpt_1", "version": "2"},
        "total_cost_usd": Decimal("0.0000012345"),
        "created_at": NOW,
    }
    assert missing is None
    # None in a JSON column is stored as JSON null, as `execute` stores it (a session whose prompt was never set).
    assert unset is not None
    assert unset["prompt"] is None
    async with engine.connect() as connection:
        stored = (await connection.execute(text("SELECT prompt::text FROM sessions WHERE id = 'ses_2'"))).scalar()
        same = (await connection.execute(select(ChatSession.prompt).where(ChatSession.id == "ses_1"))).scalar()
    assert stored == "null"
    assert same == {"id": "pmpt_1", "version": "2"}


async def test_a_constraint_violation_is_sqlalchemys_integrity_error(engine: AsyncEngine) -> None:
    async with driver_connection(engine) as driver:
        await driver.fetchrow(NEW_SESSION, _session("ses_1", "conv_1", None))
        with pytest.raises(IntegrityError):
            await driver.fetchrow(NEW_SESSION, _session("ses_2", "conv_1", None))  # conversation ids are unique
        # The connection is still good for the next statement.
        row = await driver.fetchrow(SESSION_OF_USER, {"user_id": "usr_1"})
    assert row == {"id": "ses_1", "name": "ada"}


async def test_a_dropped_connection_is_invalidated_and_the_next_checkout_works(engine: AsyncEngine) -> None:
    async with driver_connection(engine) as driver:
        await driver.fetchrow(NEW_SESSION, _session("ses_1", "conv_1", None))
    # Postgres drops the pooled connection (a restart, a failover, an idle timeout on a proxy).
    other = build_engine(engine.url.render_as_string(hide_password=False))
    try:
        async with other.connect() as admin:
            terminated = await admin.scalar(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            )
    finally:
        await other.dispose()
    assert terminated == 1
    with pytest.raises(DBAPIError) as raised:
        async with driver_connection(engine) as driver:
            await driver.fetchrow(SESSION_OF_USER, {"user_id": "usr_1"})
    # What the API answers with 503 and a retry (see api/error_handlers.py), not a 500.
    assert raised.value.connection_invalidated
    async with driver_connection(engine) as driver:
        assert await driver.fetchrow(SESSION_OF_USER, {"user_id": "usr_1"}) == {"id": "ses_1", "name": "ada"}


async def test_work_meanwhile_runs_once_and_a_failure_in_it_still_lets_the_statement_land(engine: AsyncEngine) -> None:
    calls: list[str] = []
    async with driver_connection(engine) as driver:
        # The statement's first run learns its result types first; the second runs `meanwhile` beside it.
        row = await driver.fetchrow(
            NEW_SESSION, _session("ses_1", "conv_1", None), meanwhile=lambda: calls.append("announced")
        )

        def broken() -> None:
            raise RuntimeError("the caller's own work failed")

        with pytest.raises(RuntimeError, match="own work"):
            await driver.fetchrow(NEW_SESSION, _session("ses_2", "conv_2", None), meanwhile=broken)
        # The connection is in a clean state: no transaction left open, the next statement runs.
        both = await driver.fetchrow(SESSION_OF_USER, {"user_id": "usr_1"})
        # The work runs in the caller's step, the statement sent: not after a pass of a busy loop.
        order: list[str] = []
        asyncio.get_running_loop().call_soon(order.append, "a loop pass")
        await driver.fetchrow(NEW_SESSION, _session("ses_3", "conv_3", None), meanwhile=lambda: order.append("work"))
    assert order == ["work", "a loop pass"]
    assert calls == ["announced"]
    assert row is not None
    assert row["id"] == "ses_1"
    assert both is not None
    async with engine.connect() as connection:
        stored = (await connection.execute(text("SELECT id FROM sessions ORDER BY id"))).scalars().all()
    assert stored == ["ses_1", "ses_2", "ses_3"]  # the statement the failed work ran beside was not lost
