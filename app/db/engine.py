"""Engine and session factory for SQLite (aiosqlite) and Postgres (asyncpg)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

# A pooled connection idle this long is pinged before use (see _ping_after_idle).
IDLE_BEFORE_PING_S = 2.0


def build_engine(
    database_url: str, *, pool_size: int = 20, pool_timeout: float = 10.0, echo: bool = False
) -> AsyncEngine:
    """`pool_size` is the most connections open at once, each kept once made: no overflow connections, which
    open under a burst and close as soon as they are returned (a connect and a close per checkout then)."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        return _sqlite_engine(database_url, echo=echo)
    engine = create_async_engine(
        database_url,
        echo=echo,
        pool_size=pool_size,
        max_overflow=0,
        pool_timeout=pool_timeout,
        json_serializer=_json_text,
    )
    _ping_after_idle(engine, IDLE_BEFORE_PING_S)
    return engine


def _json_text(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        # An integer beyond 64 bits (valid JSON, e.g. in a client's tool schema) that orjson refuses.
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _ping_after_idle(engine: AsyncEngine, idle_s: float) -> None:
    """`pool_pre_ping`, but only for a connection that sat in the pool for `idle_s`.

    A plain pre-ping costs two round trips (BEGIN, ROLLBACK on asyncpg) at every checkout, and a turn checks
    out two or three times; a connection in steady use has just proved itself. One that waited long enough
    for the server to have restarted or dropped it is pinged, and replaced when the ping fails (raising
    DisconnectionError makes the pool discard it and check out another: SQLAlchemy's documented pessimistic
    disconnect handling). A connection that breaks while in use is still handled as before: SQLAlchemy
    invalidates the pool and the caller's retry (or the spool) takes over.
    """
    pool = engine.sync_engine.pool
    dialect = engine.sync_engine.dialect

    @event.listens_for(pool, "checkin")
    def _on_checkin(_dbapi_connection: Any, record: Any) -> None:
        if record is not None:
            record.info["parley_idle_since"] = time.monotonic()

    @event.listens_for(pool, "checkout")
    def _on_checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.get("parley_idle_since")
        if idle_since is None or time.monotonic() - idle_since < idle_s:
            return
        try:
            alive = dialect.do_ping(dbapi_connection)
        except Exception as error:
            raise DisconnectionError("connection failed its ping after sitting idle") from error
        if not alive:
            raise DisconnectionError("connection failed its ping after sitting idle")


def _sqlite_engine(database_url: str, *, echo: bool) -> AsyncEngine:
    url = make_url(database_url)
    if url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(database_url, echo=echo, connect_args={"timeout": 30})

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # pysqlite's own transaction handling emits a late BEGIN that breaks SAVEPOINT and
        # transactional DDL; take it over (SQLAlchemy's documented aiosqlite recipe).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        # IMMEDIATE takes the write lock up front: a deferred transaction that reads and then writes
        # fails with SQLITE_BUSY (no wait) when another connection wrote in between.
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def build_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


def engine_of(sessionmaker: async_sessionmaker[AsyncSession]) -> AsyncEngine:
    """The engine a sessionmaker binds to, for the hot paths that run Core statements on a bare connection: an
    ORM session around them costs more CPU than the statements' own work."""
    engine: AsyncEngine = sessionmaker.kw["bind"]
    return engine
