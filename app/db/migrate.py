"""Running Alembic from inside Parley: the embedded database at start-up, `parley migrate`, readiness."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from app.settings import PROJECT_ROOT

logger = logging.getLogger(__name__)

# Postgres's SQLSTATEs for a statement that names a table or a column the database does not have.
UNDEFINED_TABLE_OR_COLUMN = frozenset({"42P01", "42703"})
SQLITE_UNDEFINED = ("no such table", "no such column")
NOT_MIGRATED = "The database is not migrated: run `parley migrate`."
# How long the check at start waits for the database (one that does not answer is /readyz's to report).
START_CHECK_TIMEOUT_S = 3.0


def migrations_dir(configured: Path | None = None) -> Path:
    """Where the Alembic chain lives: configured, beside the source tree, or in the working directory."""
    for candidate in (configured, PROJECT_ROOT / "migrations", Path.cwd() / "migrations"):
        if candidate is not None and (candidate / "env.py").is_file():
            return candidate
    raise FileNotFoundError("Alembic migrations not found; set PARLEY_MIGRATIONS_DIR")


def alembic_config(directory: Path | None = None, *, url: str | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir(directory)))
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def head_revision(directory: Path | None = None) -> str | None:
    return ScriptDirectory.from_config(alembic_config(directory)).get_current_head()


def in_one_transaction(connection: Connection, run: Callable[[Connection], None]) -> None:
    """`run` (migrations) in one transaction of `connection`, which must have none open; on SQLite with
    foreign keys unenforced meanwhile, and checked before the commit.

    Alembic's batch mode changes a SQLite table by rebuilding it (a new table, the rows copied, the old one
    dropped), and dropping a table whose foreign keys are enforced deletes its rows first, and with them, by
    ON DELETE CASCADE, every row referring to them. SQLite switches enforcement only outside a transaction.
    """
    sqlite = connection.dialect.name == "sqlite"
    if sqlite:
        _sqlite_pragma(connection, "PRAGMA foreign_keys=OFF")
    try:
        with connection.begin():
            run(connection)
            if sqlite and connection.exec_driver_sql("PRAGMA foreign_key_check").first() is not None:
                raise RuntimeError("the migration left rows that refer to missing rows; nothing was changed")
    finally:
        if sqlite:
            _sqlite_pragma(connection, "PRAGMA foreign_keys=ON")


def _sqlite_pragma(connection: Connection, pragma: str) -> None:
    # On the driver's connection: through SQLAlchemy, the statement would begin a transaction first (and
    # the pragma does nothing inside one).
    cursor = connection.connection.cursor()
    try:
        cursor.execute(pragma)
    finally:
        cursor.close()


async def upgrade(engine: AsyncEngine, *, revision: str = "head", directory: Path | None = None) -> None:
    config = alembic_config(directory)

    def _run(connection: Connection) -> None:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)

    async with engine.connect() as connection:
        await connection.run_sync(in_one_transaction, _run)


async def downgrade(engine: AsyncEngine, *, revision: str, directory: Path | None = None) -> None:
    config = alembic_config(directory)

    def _run(connection: Connection) -> None:
        config.attributes["connection"] = connection
        command.downgrade(config, revision)

    async with engine.connect() as connection:
        await connection.run_sync(in_one_transaction, _run)


async def current_revision(engine: AsyncEngine) -> str | None:
    def _read(connection: Connection) -> str | None:
        return MigrationContext.configure(connection).get_current_revision()

    async with engine.connect() as connection:
        return await connection.run_sync(_read)


def schema_missing(error: BaseException) -> bool:
    """Whether `error`, or what caused it, is a statement that named a table or column the database does not have:
    the database is behind this code's migrations (a new Postgres database before `parley migrate`)."""
    seen: BaseException | None = error
    while seen is not None:
        # asyncpg's errors carry their SQLSTATE, and SQLAlchemy's adaptations of them a copy.
        if getattr(seen, "sqlstate", None) in UNDEFINED_TABLE_OR_COLUMN:
            return True
        if isinstance(seen, sqlite3.OperationalError) and str(seen).startswith(SQLITE_UNDEFINED):
            return True
        seen = seen.__cause__
    return False


class SchemaWatch:
    """Says that the database is not migrated once in the log, not once per request: at start, or when the first
    statement finds a table missing, and again only after /readyz has seen it at the head revision."""

    def __init__(self, engine: AsyncEngine, head: str | None) -> None:
        self._engine = engine
        self.head = head
        self._said = False

    async def check(self) -> None:
        """At start. A database that cannot be reached is not this check's to report (/readyz says so), and must
        not hold up the start for long."""
        try:
            revision = await asyncio.wait_for(current_revision(self._engine), START_CHECK_TIMEOUT_S)
        except Exception:
            return
        if revision != self.head:
            self.behind(f"at revision {revision}" if revision else "empty (never migrated)")

    def behind(self, found: str = "missing a table or column") -> None:
        if self._said:
            return
        self._said = True
        logger.warning(
            "parley.database_not_migrated: the database %s is %s, and this Parley needs revision %s: run "
            "`parley migrate`; until then the API answers 503 database_not_migrated",
            self._engine.url.render_as_string(hide_password=True),
            found,
            self.head,
        )

    def current(self) -> None:
        self._said = False
