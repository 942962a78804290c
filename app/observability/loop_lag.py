"""How late the event loop runs: the replica's load as a request feels it.

A relay near its capacity still keeps its streams on time (each event is sent from the callback that read
it), while everything that waits for a turn of the loop waits longer: at 700 paced streams on one core the
loop came back to a 5-ms timer 15-30 ms late, and a turn's start, which waits for the loop about ten times
(the accept, the request, the database, the upstream), took 300 ms where it takes 10 alone. CPU use does not
show it (that process was at 0.7 of its core). A timer's lateness does, as Node's `monitorEventLoopDelay`
measures it: what a metric is for, to add replicas before users notice.
"""

from __future__ import annotations

import asyncio
import contextlib

from app.observability.metrics import Metrics

# Ten wake-ups a second: each costs a few microseconds, and a lag that lasts a tenth of a second is seen.
INTERVAL_S = 0.1


class LoopLagWatch:
    """Sleeps `interval_s` over and over and records how late each wake-up came, until stopped."""

    def __init__(self, metrics: Metrics, *, interval_s: float = INTERVAL_S) -> None:
        self._metrics = metrics
        self._interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="loop-lag")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self._interval_s
        observe = self._metrics.loop_lag.observe
        while True:
            before = loop.time()
            await asyncio.sleep(interval)
            observe(max(loop.time() - before - interval, 0.0))
