"""Replicas without a shared event log: said once, as soon as a second Parley process beats on the database.

Without `PARLEY_REDIS_URL` each process keeps its turns' event logs in memory, which is right for one process.
Behind a load balancer, a browser resuming a turn through another replica than the one running it gets only the
turn's terminal event; the warning names the setting that fixes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db.base import utcnow
from app.repositories import turn_repository as turns_repo

logger = logging.getLogger(__name__)


class UnsharedLogWatch:
    """Counts the live runners every `interval_s` until there are two or more, then warns once and stops."""

    def __init__(
        self, sessionmaker: async_sessionmaker[AsyncSession], *, interval_s: float, alive_within_s: float
    ) -> None:
        self._sessionmaker = sessionmaker
        self._interval_s = interval_s
        self._alive_within = dt.timedelta(seconds=alive_within_s)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="unshared-log-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                async with self._sessionmaker() as db:
                    runners = await turns_repo.count_live_runners(db, beat_since=utcnow() - self._alive_within)
            except Exception as error:  # a database that is down is the runner's to report
                logger.debug("replicas.not_counted: %s", type(error).__name__)
                continue
            if runners > 1:
                logger.warning(
                    "replicas.event_log_not_shared: %d Parley processes share this database, but PARLEY_REDIS_URL is "
                    "not set: each keeps its turns' event logs in memory, so a resume that reaches another process "
                    "than the one running the turn gets only the turn's terminal event",
                    runners,
                )
                return
