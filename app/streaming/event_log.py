"""The per-turn event log: every frame a turn produced, encoded once, readable from any point.

The runner appends; any number of readers (the POST's own stream, resumers) iterate from where they are.
Readers never block the writer: a slow reader only falls behind in the shared list, so memory is bounded
by the turn's size, not by the number or speed of readers. A log stays in memory for the resume window
after its turn ends. It is the seam for replicas without sticky routing: a Redis Streams log would offer
the same methods.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator

from app.streaming.frames import PING, RETRY_MS, encode_frame


class EventLog:
    """One turn's frames, in order; event ids count from `base + 1`."""

    __slots__ = ("_changed", "_frames", "base", "closed_at", "turn_id")

    def __init__(self, turn_id: str, *, base: int = 0) -> None:
        self.turn_id = turn_id
        # Ids up to `base` were sent by an earlier log of the same turn (a turn that went on after
        # `turn.requires_action` in another process, or after its first log expired).
        self.base = base
        self._frames: list[bytes] = []
        # Set at the next append or close, for the readers waiting; made only when one waits.
        self._changed: asyncio.Event | None = None
        self.closed_at: float | None = None

    def __len__(self) -> int:
        """The id of the last event (0 when empty)."""
        return self.base + len(self._frames)

    @property
    def closed(self) -> bool:
        return self.closed_at is not None

    def append(self, name: str, data: bytes) -> int:
        """Add one event; returns its id."""
        if self.closed_at is not None:
            raise RuntimeError(f"event log of {self.turn_id} is closed")
        event_id = len(self) + 1
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
        changed, self._changed = self._changed, None
        if changed is not None:
            changed.set()

    async def read(self, after: int = 0) -> AsyncGenerator[bytes, None]:
        """Every frame after event id `after`, then the live ones until the log closes. Whatever has piled up
        since the last step comes as one chunk. Starts with a `: ping` comment when nothing is there yet, so
        that a client knows at once that the stream is open."""
        position = max(after - self.base, 0)
        if position >= len(self._frames) and not self.closed:
            yield PING
        while True:
            end = len(self._frames)
            if position < end:
                yield self._frames[position] if end - position == 1 else b"".join(self._frames[position:end])
                position = end
            elif self.closed:
                return
            else:
                if self._changed is None:
                    self._changed = asyncio.Event()
                await self._changed.wait()


class EventLogRegistry:
    """This process's event logs by turn id, each kept `retention_s` after it closed."""

    def __init__(self, *, retention_s: float) -> None:
        self.retention_s = retention_s
        self._logs: dict[str, EventLog] = {}

    def create(self, turn_id: str, *, base: int = 0) -> EventLog:
        log = self._logs[turn_id] = EventLog(turn_id, base=base)
        return log

    def get(self, turn_id: str) -> EventLog | None:
        return self._logs.get(turn_id)

    def expire(self, now: float | None = None) -> int:
        """Drop the logs that closed longer than the window ago; returns how many."""
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
