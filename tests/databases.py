"""Throw-away databases for the suite: a migrated SQLite file and a migrated Postgres database.

Postgres comes from PARLEY_TEST_DATABASE_URL (an admin URL; default: the local server as `postgres`).
The suite creates its own database there and drops it at the end. When Postgres cannot be reached the
Postgres half of the suite is skipped on a laptop, and fails under CI=true.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from app.db.engine import build_engine
from app.db.migrate import upgrade

DEFAULT_POSTGRES_ADMIN_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
BACKENDS = ("sqlite", "postgres")


def postgres_admin_url() -> str:
    return os.environ.get("PARLEY_TEST_DATABASE_URL", DEFAULT_POSTGRES_ADMIN_URL)


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


async def _postgres_reachable(admin_url: str) -> Exception | None:
    engine = build_engine(admin_url)
    try:
        async with engine.connect() as connection:
            await asyncio.wait_for(connection.execute(text("SELECT 1")), timeout=5)
    except Exception as error:
        return error
    finally:
        await engine.dispose()
    return None


@asynccontextmanager
async def postgres_database(*, migrate: bool = True) -> AsyncIterator[str]:
    """A new, empty (or migrated) Postgres database; dropped afterwards."""
    admin_url = postgres_admin_url()
    problem = await _postgres_reachable(admin_url)
    if problem is not None:
        message = f"Postgres at {make_url(admin_url).render_as_string(hide_password=True)} unreachable: {problem}"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    name = f"parley_test_{uuid.uuid4().hex[:12]}"
    admin = build_engine(admin_url)
    try:
        async with admin.connect() as connection:
            await connection.execution_options(isolation_level="AUTOCOMMIT")
            await connection.execute(text(f'CREATE DATABASE "{name}"'))
        url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
        if migrate:
            engine = build_engine(url)
            try:
                await upgrade(engine)
            finally:
                await engine.dispose()
        yield url
    finally:
        async with admin.connect() as connection:
            await connection.execution_options(isolation_level="AUTOCOMMIT")
            await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await admin.dispose()


@asynccontextmanager
async def sqlite_database(directory: Path, *, migrate: bool = True) -> AsyncIterator[str]:
    url = f"sqlite+aiosqlite:///{directory / f'parley-{uuid.uuid4().hex[:8]}.db'}"
    if migrate:
        engine = build_engine(url)
        try:
            await upgrade(engine)
        finally:
            await engine.dispose()
    yield url


@asynccontextmanager
async def database(backend: str, directory: Path, *, migrate: bool = True) -> AsyncIterator[str]:
    if backend == "postgres":
        async with postgres_database(migrate=migrate) as url:
            yield url
    else:
        async with sqlite_database(directory, migrate=migrate) as url:
            yield url
