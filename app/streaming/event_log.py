"""The per-turn event log: every frame a turn produced, encoded once, readable from any point.

The runner appends; any number of readers (the POST's own stream, resumers) read from where they are.
Readers never block the writer: a slow reader only falls behind in the shared list, so memory is bounded
by the turn's size, not by the number or speed of readers. Kept in memory for the resume window after the
turn ends. This is the seam for running several replicas behind a load balancer without sticky routing:
a Redis Streams implementation of the same methods.
"""

from __future__ import annotations

import asyncio
import time

from app.streaming.sse import RETRY_MS, encode_frame


class EventLog:
    __slots__ = ("_frames", "_waiters", "base", "closed_at", "turn_id")

    def __init__(self, turn_id: str, *, base: int = 0) -> None:
        self.turn_id = turn_id
        # Ids before `base` were sent by an earlier log of the same turn (a turn that went on after
        # `turn.requires_action` in another process, or after its first log expired).
        self.base = base
        self._frames: list[bytes] = []
        # Futures of the readers waiting for the next frame; resolved and dropped by the next append.
        self._waiters: list[asyncio.Future[None]] = []
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
        if self._waiters:
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
        # No per-event cost with nobody behind: readers register a future only when they have caught up.
        waiters = self._waiters
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
        waiters.clear()

    def reader(self, after: int = 0) -> LogReader:
        """A place in this log just after event id `after`, for a consumer that does its own waiting."""
        return LogReader(self, after)


class LogReader:
    """One reader's position in an `EventLog`: `take()` what is there, else `wait()` for more. The reader
    brings its own future to wait on, so that something else (the SSE response's keep-alive timer) can wake
    it too; no async generator, so no generator step per chunk."""

    __slots__ = ("_log", "_position", "_waiter")

    def __init__(self, log: EventLog, after: int) -> None:
        self._log = log
        self._position = max(after - log.base, 0)
        self._waiter: asyncio.Future[None] | None = None

    def take(self) -> bytes | None:
        """Every frame not taken yet as one chunk (the stored bytes themselves when there is one), or None."""
        frames = self._log._frames
        position = self._position
        end = len(frames)
        if position >= end:
            return None
        self._position = end
        return frames[position] if end - position == 1 else b"".join(frames[position:end])

    @property
    def finished(self) -> bool:
        """Everything taken and the log closed: the stream is over."""
        return self._log.closed_at is not None and self._position >= len(self._log._frames)

    def wait(self, waiter: asyncio.Future[None]) -> None:
        """Resolve `waiter` at the next append or close (unless something else resolved it first)."""
        self.close()
        self._waiter = waiter
        self._log._waiters.append(waiter)

    def close(self) -> None:
        """Stop waiting (the waiter was resolved by someone else, or the reader is done)."""
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            waiters = self._log._waiters
            if waiter in waiters:
                waiters.remove(waiter)


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
