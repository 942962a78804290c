"""The per-turn event log: every frame a turn produced, encoded once, readable from any point.

The runner appends; any number of readers (the POST's own stream, resumers) read from where they are.
Readers never block the writer: a slow reader only falls behind in the shared list, so memory is bounded
by the turn's size, not by the number or speed of readers. Kept in memory for the resume window after the
turn ends. This is the seam for running several replicas behind a load balancer without sticky routing:
a Redis Streams implementation of the same four methods.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from app.streaming.sse import RETRY_MS, encode_frame


class EventLog:
    __slots__ = ("_frames", "_wakeup", "base", "closed_at", "turn_id")

    def __init__(self, turn_id: str, *, base: int = 0) -> None:
        self.turn_id = turn_id
        # Ids before `base` were sent by an earlier log of the same turn (a turn that went on after
        # `turn.requires_action` in another process, or after its first log expired).
        self.base = base
        self._frames: list[bytes] = []
        self._wakeup: asyncio.Event | None = None
        self.closed_at: float | None = None

    def __len__(self) -> int:
        """The id of the last event (0 when empty)."""
        return self.base + len(self._frames)

    @property
    def closed(self) -> bool:
        return self.closed_at is not None

    def append(self, name: str, data: bytes) -> int:
        """Add one event; returns its id (1, 2, 3 … within the turn)."""
        if self.closed_at is not None:
            raise RuntimeError(f"event log of {self.turn_id} is closed")
        event_id = self.base + len(self._frames) + 1
        self._frames.append(encode_frame(event_id, name, data, retry_ms=RETRY_MS if event_id == 1 else None))
        self._wake()
        return event_id

    def close(self) -> None:
        if self.closed_at is None:
            self.closed_at = time.monotonic()
            self._wake()

    def reopen(self) -> None:
        """The turn goes on (tool outputs arrived): new events follow the old ones, ids continuing."""
        self.closed_at = None

    def _wake(self) -> None:
        # Readers wait on an Event created only when one is waiting: no per-event cost with nobody behind.
        if self._wakeup is not None:
            self._wakeup.set()
            self._wakeup = None

    async def read(self, after: int = 0) -> AsyncIterator[bytes]:
        """Frames after id `after`, then live ones until the log closes. Each chunk holds every frame
        available at that moment, so a reader that fell behind catches up in one write."""
        position = max(after - self.base, 0)
        while True:
            frames = self._frames
            if position < len(frames):
                end = len(frames)
                yield frames[position] if end - position == 1 else b"".join(frames[position:end])
                position = end
                continue
            if self.closed_at is not None:
                return
            if self._wakeup is None:
                self._wakeup = asyncio.Event()
            await self._wakeup.wait()


class EventLogRegistry:
    """The event logs of this process, by turn id, each kept `retention_s` after it closed."""

    def __init__(self, *, retention_s: float) -> None:
        self.retention_s = retention_s
        self._logs: dict[str, EventLog] = {}

    def create(self, turn_id: str, *, base: int = 0) -> EventLog:
        log = EventLog(turn_id, base=base)
        self._logs[turn_id] = log
        return log

    def get(self, turn_id: str) -> EventLog | None:
        return self._logs.get(turn_id)

    def expire(self, now: float | None = None) -> int:
        now = time.monotonic() if now is None else now
        expired = [
            turn_id
            for turn_id, log in self._logs.items()
            if log.closed_at is not None and now - log.closed_at > self.retention_s
        ]
        for turn_id in expired:
            del self._logs[turn_id]
        return len(expired)

    def __len__(self) -> int:
        return len(self._logs)
