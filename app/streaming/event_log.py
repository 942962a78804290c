"""The per-turn event log: every frame a turn produced, encoded once, readable from any point.

The runner appends; any number of readers (the POST's own stream, resumers) iterate from where they are.
Readers never block the writer: a slow reader only falls behind in the shared list, so memory is bounded
by the turn's size, not by the number or speed of readers. A log stays in memory for the resume window
after its turn ends, and while the finished turns' logs fit in the registry's byte cap (oldest out first).

With Redis (`PARLEY_REDIS_URL`) a log also hands each frame to a sink (`streaming.redis_log`) that writes it
to the turn's Redis Stream for the other replicas; this process's readers still read the memory.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Protocol

from app.streaming.frames import PING, RETRY_MS, encode_frame

# What a frame costs beyond its bytes: the bytes object's header and the list's pointer to it.
FRAME_OVERHEAD = sys.getsizeof(b"") + 8


@dataclass(frozen=True, slots=True)
class StoredFrames:
    """What a shared log holds of one turn: `frames` from event 1 on when none is missing (empty otherwise), and
    the id of the last event it holds (0 for none)."""

    frames: list[bytes]
    last_id: int


class FrameSink(Protocol):
    """Where a shared log's frames also go; `frame` and `closed` return at once (the sink writes in the
    background). `stored` reads a turn's frames back, for a process taking the turn over; None when it cannot."""

    def frame(self, turn_id: str, event_id: int, frame: bytes) -> None: ...
    def closed(self, turn_id: str, event_id: int) -> None: ...
    async def stored(self, turn_id: str) -> StoredFrames | None: ...


class EventLog:
    """One turn's frames, in order; event ids count from `base + 1`."""

    __slots__ = ("_changed", "_frames", "base", "closed_at", "registry", "size", "turn_id")

    def __init__(self, turn_id: str, *, base: int = 0, registry: EventLogRegistry | None = None) -> None:
        self.turn_id = turn_id
        # Ids up to `base` were sent by an earlier log of the same turn (a turn that went on after
        # `turn.requires_action` in another process, or after its first log expired).
        self.base = base
        self._frames: list[bytes] = []
        # Set at the next append or close, for the readers waiting; made only when one waits.
        self._changed: asyncio.Event | None = None
        self.closed_at: float | None = None
        # The bytes it holds (frames and their overhead), counted into its registry's while it is in one.
        self.size = 0
        self.registry = registry

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
        frame = encode_frame(event_id, name, data, retry_ms=RETRY_MS if event_id == 1 else None)
        self._frames.append(frame)
        size = len(frame) + FRAME_OVERHEAD
        self.size += size
        registry = self.registry
        if registry is not None:
            registry.bytes_held += size
            if registry.bytes_held > registry.max_bytes:
                registry.evict()
        self._wake()
        return event_id

    def restore(self, frames: list[bytes]) -> None:
        """Hold frames the turn already sent, from event 1 on, for this process's readers (a turn taken over
        from a process that died): they are in the shared log already and are not written again."""
        if len(self) != 0:
            raise RuntimeError(f"event log of {self.turn_id} is not empty")
        self._frames.extend(frames)
        size = sum(len(frame) for frame in frames) + FRAME_OVERHEAD * len(frames)
        self.size += size
        if self.registry is not None:
            self.registry.bytes_held += size
        self._wake()

    def close(self) -> None:
        if self.closed_at is None:
            self.closed_at = time.monotonic()
            if self.registry is not None:
                self.registry.note_closed(self)
            self._wake()

    def reopen(self) -> None:
        """The turn goes on (tool outputs arrived): new events follow the old ones, ids continuing."""
        self.closed_at = None
        if self.registry is not None:
            self.registry.note_reopened(self)

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


class SharedEventLog(EventLog):
    """A log whose frames, and its close, also go to a sink that other processes read (a Redis Stream)."""

    __slots__ = ("sink",)

    def __init__(
        self, turn_id: str, *, sink: FrameSink, base: int = 0, registry: EventLogRegistry | None = None
    ) -> None:
        super().__init__(turn_id, base=base, registry=registry)
        self.sink = sink

    def append(self, name: str, data: bytes) -> int:
        event_id = super().append(name, data)
        self.sink.frame(self.turn_id, event_id, self._frames[-1])
        return event_id

    def close(self) -> None:
        if self.closed_at is None:
            super().close()
            self.sink.closed(self.turn_id, len(self))


class EventLogRegistry:
    """This process's event logs by turn id. A closed log is kept `retention_s` after it closed, and only while
    all the logs hold at most `max_bytes`: past that, closed logs leave, the one that closed first first
    (running turns' logs always stay). With a `sink`, the logs it makes are shared."""

    def __init__(self, *, retention_s: float, max_bytes: int | None = None, sink: FrameSink | None = None) -> None:
        self.retention_s = retention_s
        self.max_bytes = sys.maxsize if max_bytes is None else max_bytes
        self.sink = sink
        # Kept up to date by the logs' appends: the frames' bytes of every log here.
        self.bytes_held = 0
        # Closed logs that left before their window because of `max_bytes`.
        self.evicted = 0
        self._logs: dict[str, EventLog] = {}
        # The closed logs, in the order they closed.
        self._closed: dict[str, EventLog] = {}

    def create(self, turn_id: str, *, base: int = 0) -> EventLog:
        previous = self._logs.get(turn_id)
        if previous is not None:
            self._drop(previous)
        log = (
            EventLog(turn_id, base=base, registry=self)
            if self.sink is None
            else SharedEventLog(turn_id, base=base, registry=self, sink=self.sink)
        )
        self._logs[turn_id] = log
        return log

    def get(self, turn_id: str) -> EventLog | None:
        return self._logs.get(turn_id)

    async def stored(self, turn_id: str) -> StoredFrames | None:
        """The turn's frames in the shared log, when logs are shared and it answers."""
        return None if self.sink is None else await self.sink.stored(turn_id)

    def note_closed(self, log: EventLog) -> None:
        self._closed[log.turn_id] = log
        if self.bytes_held > self.max_bytes:
            self.evict()

    def note_reopened(self, log: EventLog) -> None:
        self._closed.pop(log.turn_id, None)

    def evict(self) -> None:
        """Over `max_bytes`: drop closed logs, the oldest first, until under it or none is left. Readers already
        reading one finish it; a resume then gets the stored turn's terminal event, as after the window."""
        while self.bytes_held > self.max_bytes and self._closed:
            self._drop(next(iter(self._closed.values())))
            self.evicted += 1

    def expire(self, now: float | None = None) -> int:
        """Drop the logs that closed longer than the window ago; returns how many."""
        now = time.monotonic() if now is None else now
        expired = [
            log for log in self._closed.values() if log.closed_at is not None and now - log.closed_at > self.retention_s
        ]
        for log in expired:
            self._drop(log)
        return len(expired)

    def _drop(self, log: EventLog) -> None:
        if self._logs.get(log.turn_id) is log:
            del self._logs[log.turn_id]
        if self._closed.get(log.turn_id) is log:
            del self._closed[log.turn_id]
        self.bytes_held -= log.size
        log.registry = None

    def __len__(self) -> int:
        return len(self._logs)
