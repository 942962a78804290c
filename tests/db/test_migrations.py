"""One Alembic chain for both databases: it upgrades, downgrades and upgrades again, and matches the models."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.util.exc import CommandError
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection

from app.db.base import Base
from app.db.engine import build_engine
from app.db.fulltext import in_schema_of
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
            dialect = connection.dialect.name
            context = MigrationContext.configure(
                connection,
                opts={
                    "compare_type": True,
                    "render_as_batch": backend == "sqlite",
                    # As env.py does: search's Postgres-only columns and SQLite's FTS5 tables are each one
                    # database's own (app/db/fulltext.py).
                    "include_object": lambda obj, name, type_, reflected, _other: in_schema_of(
                        dialect, obj, name, type_, reflected
                    ),
                },
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


NAMESPACED = "a3c9e1f2b7d4"  # identities namespaced by their source
BEFORE_NAMESPACES = "7d41e0c93b58"


def _seed_users(connection: Connection) -> None:
    """Three users as the schema before namespaces held them: two with API keys (one revoked), one without (a
    JWT's subject); the first also has a session."""
    statements = [
        "INSERT INTO users (id, name, created_at) VALUES ('user_keyed', 'alice', CURRENT_TIMESTAMP)",
        "INSERT INTO users (id, name, created_at) VALUES ('user_revoked', 'carol', CURRENT_TIMESTAMP)",
        "INSERT INTO users (id, name, created_at) VALUES ('user_subject', 'bob', CURRENT_TIMESTAMP)",
        "INSERT INTO api_keys (id, user_id, key_hash, prefix, created_at) "
        "VALUES ('key_a', 'user_keyed', 'hash-a', 'pk_a', CURRENT_TIMESTAMP)",
        "INSERT INTO api_keys (id, user_id, key_hash, prefix, created_at, revoked_at) "
        "VALUES ('key_c', 'user_revoked', 'hash-c', 'pk_c', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)",
        "INSERT INTO sessions (id, user_id, conversation_id, metadata, created_at, updated_at, turn_count, "
        "total_cost_usd) VALUES ('sess_a', 'user_keyed', 'conv_a', '{}', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, 0, 0)",
    ]
    for statement in statements:
        connection.execute(text(statement))


def _users(connection: Connection) -> dict[str, tuple[str, ...]]:
    columns = (
        "id, source, name" if "source" in {c["name"] for c in inspect(connection).get_columns("users")} else "id, name"
    )
    return {row[0]: tuple(row[1:]) for row in connection.execute(text(f"SELECT {columns} FROM users"))}


def _count(connection: Connection, table: str) -> int:
    return int(connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("issuer", "jwt_source"), [(None, "jwt"), ("https://id.example.test/", "jwt:https://id.example.test/")]
)
async def test_users_with_keys_go_to_the_api_key_namespace_and_the_rest_under_the_issuer(
    backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, issuer: str | None, jwt_source: str
) -> None:
    monkeypatch.chdir(tmp_path)  # no `.env` file here
    if issuer is None:
        monkeypatch.delenv("PARLEY_JWT_ISSUER", raising=False)
    else:
        monkeypatch.setenv("PARLEY_JWT_ISSUER", issuer)
    async with database(backend, tmp_path, migrate=False) as url:
        engine = build_engine(url)
        try:
            await upgrade(engine, revision=BEFORE_NAMESPACES)
            async with engine.begin() as connection:
                await connection.run_sync(_seed_users)

            await upgrade(engine, revision=NAMESPACED)
            async with engine.begin() as connection:
                assert await connection.run_sync(_users) == {
                    "user_keyed": ("api_key", "alice"),
                    "user_revoked": ("api_key", "carol"),
                    "user_subject": (jwt_source, "bob"),
                }
                # Nothing that refers to a user went with the table's rebuild.
                assert await connection.run_sync(_count, "api_keys") == 2
                assert await connection.run_sync(_count, "sessions") == 1
                # One name, two people: the API-key user alice and the JWT subject alice.
                await connection.execute(
                    text(
                        "INSERT INTO users (id, source, name, created_at) "
                        "VALUES ('user_subject_alice', :source, 'alice', CURRENT_TIMESTAMP)"
                    ),
                    {"source": jwt_source},
                )

            await downgrade(engine, revision=BEFORE_NAMESPACES)
            async with engine.begin() as connection:
                assert await connection.run_sync(_users) == {
                    "user_keyed": ("alice",),
                    "user_revoked": ("carol",),
                    "user_subject": ("bob",),
                    "user_subject_alice": ("alice user_subject_alice",),
                }
                assert await connection.run_sync(_count, "api_keys") == 2
                assert await connection.run_sync(_count, "sessions") == 1
        finally:
            await engine.dispose()
