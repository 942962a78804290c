"""API-key revocations told to every replica at once, over Postgres LISTEN/NOTIFY.

Each replica remembers a verified key for a while (`Authenticator`), because looking it up costs a database
round trip before every turn's first token, and a user's turns are usually further apart than a few
seconds. A revoke is sent on the `parley_key_revoked` channel in the revoking transaction (Postgres delivers
it at commit), and every replica listening forgets the key at once; while it listens, a replica may trust
its cache for `PARLEY_AUTH_CACHE_NOTIFIED_TTL_S`, otherwise for `PARLEY_AUTH_CACHE_TTL_S` only. A replica
that was not listening (just started, its connection lost) forgets every key when it starts listening
again, as it may have missed revokes meanwhile.

On a connection of its own (an engine without a pool, so never shared or reset), reached through SQLAlchemy's
`AsyncConnection.get_raw_connection()`: LISTEN is the driver's (asyncpg), with no SQLAlchemy construct.
SQLite (one server, the embedded default) has nothing to listen to: the server that handles a revoke forgets the
key itself, and reads the keys revoked by another process (`parley keys revoke`) every POLL_INTERVAL_S
(`RevocationPoller`), with the same effect.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from app.db.base import utcnow
from app.observability.metrics import Metrics
from app.repositories import user_repository as users_repo
from app.services.auth import Authenticator

logger = logging.getLogger(__name__)

CHANNEL = users_repo.KEY_REVOKED_CHANNEL
# How often an idle listening connection is checked: a connection lost without the socket closing (a
# network partition) is noticed within this, and a cache entry is never trusted past the notified TTL.
PING_INTERVAL_S = 10.0
RETRY_S = 2.0
# SQLite: how often the server reads the keys revoked by another process, and how far back each read looks (a
# revoke is stamped before its transaction commits, so it may become visible a little after its time).
POLL_INTERVAL_S = 1.0
POLL_OVERLAP = dt.timedelta(seconds=60)


class RevocationListener:
    """Listens on CHANNEL for the process's life, reconnecting when the connection is lost."""

    def __init__(self, engine: AsyncEngine, authenticator: Authenticator, metrics: Metrics) -> None:
        # The same database, credentials and options as the pool's connections, one connection at a time.
        self._engine = create_async_engine(engine.url, poolclass=NullPool)
        self._authenticator = authenticator
        self._metrics = metrics
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="auth-revocations")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._engine.dispose()

    async def _run(self) -> None:
        while True:
            try:
                await self._listen()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                logger.warning("auth.revocations_unheard: %s", type(error).__name__)
            await asyncio.sleep(RETRY_S)

    async def _listen(self) -> None:
        """One connection's life: listen until it is lost."""
        async with self._engine.connect() as connection:
            listener: Any = (await connection.get_raw_connection()).driver_connection
            lost = asyncio.Event()
            try:
                listener.add_termination_listener(lambda _connection: lost.set())
                await listener.add_listener(CHANNEL, self._on_revoked)
                self._authenticator.revocations_heard(True)
                self._metrics.revocations_listening.set(1)
                while not lost.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(lost.wait(), PING_INTERVAL_S)
                    if not lost.is_set():
                        await connection.execute(select(1))
            finally:
                self._metrics.revocations_listening.set(0)
                self._authenticator.revocations_heard(False)

    def _on_revoked(self, _connection: Any, _pid: int, _channel: str, key_hash: str) -> None:
        self._authenticator.forget_key(key_hash)


class RevocationPoller:
    """SQLite's stand-in for the listener: every POLL_INTERVAL_S, forgets the keys revoked since it last looked."""

    def __init__(self, engine: AsyncEngine, authenticator: Authenticator) -> None:
        self._engine = engine
        self._authenticator = authenticator
        self._task: asyncio.Task[None] | None = None
        # Revokes already acted on, by key hash, while they are within the overlap of the next read.
        self._seen: dict[str, dt.datetime] = {}
        self._since = utcnow()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="auth-revocations")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(POLL_INTERVAL_S)
            try:
                await self.poll()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                if not failing:
                    logger.warning("auth.revocations_unread: %s", type(error).__name__)
                failing = True
            else:
                failing = False

    async def poll(self) -> None:
        start = self._since - POLL_OVERLAP
        for key_hash, at in await users_repo.revoked_key_hashes_since(self._engine, start):
            self._since = max(self._since, at)
            if key_hash not in self._seen:
                self._seen[key_hash] = at
                self._authenticator.forget_key(key_hash)
        self._seen = {key_hash: at for key_hash, at in self._seen.items() if at >= start}
