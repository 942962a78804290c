"""One Alembic chain for both databases: it upgrades, downgrades and upgrades again, and matches the models."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.util.exc import CommandError
from sqlalchemy import inspect
from sqlalchemy.engine import Connection

from app.db.base import Base
from app.db.engine import build_engine
from app.db.migrate import alembic_config, current_revision, downgrade, head_revision, upgrade
from tests.databases import BACKENDS, database

EXPECTED_TABLES = {
    "users",
    "api_keys",
    "sessions",
    "messages",
    "turns",
    "usage_records",
    "runner_heartbeats",
    "user_monthly_spend",
    "alembic_version",
}


def _tables(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names())


@pytest.mark.parametrize("backend", BACKENDS)
async def test_upgrade_downgrade_upgrade(backend: str, tmp_path: Path) -> None:
    async with database(backend, tmp_path, migrate=False) as url:
        engine = build_engine(url)
        try:
            await upgrade(engine)
            assert await current_revision(engine) == head_revision()
            async with engine.connect() as connection:
                assert await connection.run_sync(_tables) >= EXPECTED_TABLES

            await downgrade(engine, revision="base")
            assert await current_revision(engine) is None
            async with engine.connect() as connection:
                assert await connection.run_sync(_tables) <= {"alembic_version"}

            await upgrade(engine)
            assert await current_revision(engine) == head_revision()
        finally:
            await engine.dispose()


@pytest.mark.parametrize("backend", BACKENDS)
async def test_models_match_migrations(backend: str, tmp_path: Path) -> None:
    """What `alembic check` does: autogenerate finds nothing left to migrate."""
    async with database(backend, tmp_path) as url:
        engine = build_engine(url)

        def diff(connection: Connection) -> list[object]:
            context = MigrationContext.configure(
                connection, opts={"compare_type": True, "render_as_batch": backend == "sqlite"}
            )
            return list(compare_metadata(context, Base.metadata))

        def check(connection: Connection) -> None:
            config = alembic_config()
            config.attributes["connection"] = connection
            command.check(config)

        try:
            async with engine.connect() as connection:
                assert await connection.run_sync(diff) == []
                await connection.run_sync(check)  # raises CommandError on a pending change
        except CommandError as error:  # pragma: no cover - the assertion message is the point
            pytest.fail(f"alembic check found changes: {error}")
        finally:
            await engine.dispose()
