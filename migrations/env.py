"""Alembic environment: one chain for SQLite and Postgres.

Parley runs migrations in-process (embedded SQLite at start-up, `parley migrate`, the test suite) by
handing a live connection in `config.attributes["connection"]`; the plain `alembic` command line builds
its own engine from Parley's settings.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from app.db import models  # noqa: F401  (registers every table on Base.metadata)
from app.db.base import Base
from app.db.engine import build_engine
from app.db.fulltext import in_schema_of
from app.db.migrate import in_one_transaction
from app.settings import Settings

target_metadata = Base.metadata
# The embedded simulator keeps its state in tables of its own in the same database (app/simulator/
# state_database.py creates them at start): not Parley's schema, so autogenerate and `alembic check` leave them be.
SIMULATOR_TABLE_PREFIX = "simulator_"


def include_object(
    dialect: str, object_: object, name: str | None, type_: str, reflected: bool, _compare_to: object | None
) -> bool:
    if type_ == "table" and reflected and name is not None and name.startswith(SIMULATOR_TABLE_PREFIX):
        return False
    # Search: Postgres-only columns and indexes, SQLite's FTS5 tables (app/db/fulltext.py).
    return in_schema_of(dialect, object_, name, type_, reflected)


def _configure_and_run(connection: Connection) -> None:
    dialect = connection.dialect.name
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=dialect == "sqlite",
        compare_type=True,
        include_object=lambda *arguments: include_object(dialect, *arguments),
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_with_own_engine(url: str) -> None:
    engine = build_engine(url)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(in_one_transaction, _configure_and_run)
    finally:
        await engine.dispose()


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _configure_and_run(connection)
        return
    url = context.config.get_main_option("sqlalchemy.url") or Settings().database_url
    asyncio.run(_run_with_own_engine(url))


if context.is_offline_mode():
    raise SystemExit("Parley's migrations run online only (they need to know the dialect).")
run_migrations_online()
