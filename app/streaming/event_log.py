"""The per-turn event log: every frame a turn produced, encoded once, readable from any point.

The runner appends; any number of readers (the POST's own stream, resumers) read from where they are.
Readers never block the writer: a slow reader only falls behind in the shared list, so memory is bounded
by the turn's size, not by the number or speed of readers. Kept in memory for the resume window after the
turn ends. This is the seam for running several replicas behind a load balancer without sticky routing:
a Redis Streams implementation of the same methods.

A closed log waits out the resume window in a compact form the garbage collector never looks at (see
`EventLogRegistry`): at a hundred turns a second a 15-minute window keeps ~90,000 logs, and as objects
(log, frame list, waiter list) every full collection would walk all of them, stalling every stream.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Generator
from typing import Protocol

from app.streaming.sse import RETRY_MS, encode_frame

# The longest the registry's sweep holds the event loop at a time (see `EventLogRegistry.expire_in_slices`).
EXPIRY_SLICE_S = 0.002


class Waiter(Protocol):
    """What a reader waits on for the next frame: resolved by the next append or the close. A future, or an
    object that acts on the new frames right away (the SSE response's `_Parked`)."""

    def done(self) -> bool: ...

    def set_result(self, result: None, /) -> None: ...


class EventLog:
    __slots__ = ("_frames", "_waiters", "base", "closed_at", "turn_id")

    def __init__(self, turn_id: str, *, base: int = 0) -> None:
        self.turn_id = turn_id
        # Ids before `base` were sent by an earlier log of the same turn (a turn that went on after
        # `turn.requires_action` in another process, or after its first log expired).
        self.base = base
        self._frames: list[bytes] = []
        # The readers waiting for the next frame; resolved and dropped by the next append.
        self._waiters: list[Waiter] = []
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
        # No per-event cost with nobody behind: readers register a waiter only when they have caught up. A
        # fresh list first: a waiter acting on the frame at once registers again for the next one.
        waiters = self._waiters
        self._waiters = []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def reader(self, after: int = 0) -> LogReader:
        """A place in this log just after event id `after`, for a consumer that does its own waiting."""
        return LogReader(self, after)

    def kept(self) -> KeptLog:
        """This closed log as one tuple of atoms: its frames, as they are.

        Not joined into one `bytes`: a join copies every frame into memory the process has not touched yet,
        and under load the page faults made it the sweep's whole cost (~50 µs for a 300-token log in a
        loop, 7.9% of Parley's CPU at 500 paced streams); a tuple of the same frames costs a pointer each.
        """
        assert self.closed_at is not None
        return (self.base, self.closed_at, tuple(self._frames))

    @classmethod
    def from_kept(cls, turn_id: str, kept: KeptLog) -> EventLog:
        base, closed_at, frames = kept
        log = cls(turn_id, base=base)
        log._frames.extend(frames)
        log.closed_at = closed_at
        return log


# (base, closed_at, the frames): a tuple holding only atoms and a tuple of bytes. The collector stops tracking
# such tuples at the first young collection that finds them (CPython untracks a tuple of untracked items), so
# the resume window's logs cost its full collections nothing.
KeptLog = tuple[int, float, tuple[bytes, ...]]


class LogReader:
    """One reader's position in an `EventLog`: `take()` what is there, else `wait()` for more. The reader
    brings its own future to wait on, so that something else (the SSE response's keep-alive timer) can wake
    it too; no async generator, so no generator step per chunk."""

    __slots__ = ("_log", "_position", "_waiter")

    def __init__(self, log: EventLog, after: int) -> None:
        self._log = log
        self._position = max(after - log.base, 0)
        self._waiter: Waiter | None = None

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

    def wait(self, waiter: Waiter) -> None:
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
    """The event logs of this process, by turn id, each kept `retention_s` after it closed.

    Open logs (and those closed since the last `expire`) are `EventLog` objects; `expire` turns the closed
    ones into `KeptLog` tuples, and `get` turns a kept one back into a log (a resume, or a turn going on
    after its tool outputs) — rare next to the turns that are never read again. A reader already holding
    the log object keeps reading it; a continued turn gets the restored copy.
    """

    def __init__(self, *, retention_s: float) -> None:
        self.retention_s = retention_s
        self._logs: dict[str, EventLog] = {}
        # In the order they closed, so that expiry stops at the first one still inside the window.
        self._kept: dict[str, KeptLog] = {}

    def create(self, turn_id: str, *, base: int = 0) -> EventLog:
        self._kept.pop(turn_id, None)
        log = EventLog(turn_id, base=base)
        self._logs[turn_id] = log
        return log

    def get(self, turn_id: str) -> EventLog | None:
        log = self._logs.get(turn_id)
        if log is None:
            kept = self._kept.pop(turn_id, None)
            if kept is not None:
                log = self._logs[turn_id] = EventLog.from_kept(turn_id, kept)
        return log

    def expire(self, now: float | None = None) -> int:
        """Drop the logs closed longer than the window ago and keep the other closed ones compact; returns
        how many were dropped."""
        expiry = self._expiry(now)
        while True:
            try:
                next(expiry)
            except StopIteration as done:
                return int(done.value)

    async def expire_in_slices(self, *, slice_s: float = EXPIRY_SLICE_S, now: float | None = None) -> int:
        """`expire`, giving the event loop back after every `slice_s` of work. Compacting and dropping cost what
        the logs hold (a pointer, or a frame to free, per event), and the sweep after a busy quarter of a
        minute finds thousands: when compacting still joined the frames, 2,000 closed 1,024-token logs took
        0.63 s in one go, a stall of every stream in the process."""
        expiry = self._expiry(now)
        clock = time.perf_counter
        deadline = clock() + slice_s
        while True:
            try:
                next(expiry)
            except StopIteration as done:
                return int(done.value)
            if clock() >= deadline:
                await asyncio.sleep(0)
                deadline = clock() + slice_s

    def _expiry(self, now: float | None) -> Generator[None, None, int]:
        """The work of `expire`, one log at a time (a yield after each). Between two steps anything may
        happen to the registry: a log reopened (its turn goes on) or created anew is left as it is now."""
        now = time.monotonic() if now is None else now
        closed = sorted(
            (log for log in self._logs.values() if log.closed_at is not None), key=lambda log: log.closed_at or 0.0
        )
        # A restored log that was only read goes back at the end with its first closing time: it may stay up
        # to one window longer than its own, and never holds newer ones back.
        for log in closed:
            if log.closed_at is None or self._logs.get(log.turn_id) is not log:
                continue
            del self._logs[log.turn_id]
            self._kept[log.turn_id] = log.kept()
            yield
        expired = []
        for turn_id, kept in self._kept.items():
            if now - kept[1] <= self.retention_s:
                break
            expired.append(turn_id)
        for turn_id in expired:
            self._kept.pop(turn_id, None)
            yield
        return len(expired)

    def __len__(self) -> int:
        return len(self._logs) + len(self._kept)
