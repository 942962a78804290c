"""Turn event logs shared by every replica: one Redis Stream per turn (`PARLEY_REDIS_URL`).

The process running a turn keeps its log in memory (`event_log`) and serves its own readers from there, so
Redis adds nothing to their latency. Each frame also goes to the turn's stream, in the background: the frames
appended since the last write go in one command (a Lua script that XADDs each, then sets the key's expiry),
with at most one write in flight, so the relay never waits for Redis and a busy relay writes bigger batches.
Any other replica replays a stream after `Last-Event-ID` and then follows it live with XREAD BLOCK; one taking
over the turn of a process that died reads the whole stream back (XRANGE) and goes on after its last entry.

Entry ids are the event ids: event n is `n-0`, and the log's close after event n is `n-1` (a turn that goes
on after `turn.requires_action` continues with `n+1-0`). Redis refuses an id not above the stream's last, so
a stream is in order and has no duplicate, and a reader sees any gap as a jump in ids. A stream expires
`PARLEY_RESUME_WINDOW_S` after its log closed (an hour more while its turn runs).

Redis down or slow: every call has a deadline. A write that fails is dropped (the frames stay in the running
process's memory, and the turn goes on, stored and billed); the writer then waits `RETRY_S` before it tries
again. A reader whose read fails, or that finds the stream missing or with a gap, raises `SharedLogUnavailable`
and its caller goes on from the stored turn. The `parley_redis_*` metrics, and one log line per outage, say so.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncGenerator
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from app.observability.metrics import Metrics
from app.streaming.event_log import StoredFrames
from app.streaming.frames import PING

logger = logging.getLogger(__name__)

KEY = "parley:turn:%s:events"
# The deadline of every call but a blocking read, which gets its block time on top.
TIMEOUT_S = 1.0
# After a failed write, frames are dropped (not tried) for this long: no connection attempt per batch.
RETRY_S = 1.0
# The writer gathers frames this long before it writes them: bigger batches, as each write has a fixed cost.
LINGER_S = 0.005
# A reader blocks this long for new entries before its caller is given a chance to look at the turn.
BLOCK_S = 2.0
# Reading a whole turn's stream back (a takeover): a long turn is thousands of entries.
TAKEOVER_READ_TIMEOUT_S = 5.0
READ_COUNT = 1000
# While a turn runs its stream lives this much longer than the resume window (a turn may be quiet for minutes).
RUNNING_EXTRA_TTL_S = 3600
ERRORS = (RedisError, OSError, TimeoutError)

# KEYS: the turns' streams. ARGV: the TTL of a running and of a closed stream, then for each key a run of
# consecutive entries: the first one's event id, how many there are, and their frames. An empty frame is the
# log's close after the event before it (and ends the run). Returns how many entries Redis refused (an id not
# above the stream's last: another process wrote them first).
APPEND_SCRIPT = """
local running_ttl, closed_ttl = ARGV[1], ARGV[2]
local i, refused = 3, 0
for k = 1, #KEYS do
  local first, n = tonumber(ARGV[i]), tonumber(ARGV[i + 1])
  local ttl = running_ttl
  i = i + 2
  for slot = 0, n - 1 do
    local frame = ARGV[i + slot]
    local reply
    if frame == '' then
      reply = redis.pcall('XADD', KEYS[k], string.format('%d-1', first + slot - 1), 'end', '1')
      ttl = closed_ttl
    else
      reply = redis.pcall('XADD', KEYS[k], string.format('%d-0', first + slot), 'f', frame)
      ttl = running_ttl
    end
    if type(reply) == 'table' and reply.err then refused = refused + 1 end
  end
  i = i + n
  redis.call('EXPIRE', KEYS[k], ttl)
end
return refused
"""


def connect(url: str) -> Redis:
    """A client that fails fast rather than hang: a deadline on connecting and on every read, no retries (each
    caller knows what to do when Redis does not answer)."""
    return Redis.from_url(
        url,
        socket_connect_timeout=TIMEOUT_S,
        socket_timeout=BLOCK_S + TIMEOUT_S,
        retry=Retry(NoBackoff(), 0),
    )


class SharedLogUnavailable(Exception):
    """The shared log cannot serve a reader further: `reason` is redis_error, missing or gap."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RedisEventLogs:
    """Writes this process's turn logs to their streams (`event_log.FrameSink`), and reads any turn's stream."""

    def __init__(self, client: Redis, *, metrics: Metrics, resume_window_s: float) -> None:
        self.client = client
        self.metrics = metrics
        self._closed_ttl = max(1, math.ceil(resume_window_s))
        self._running_ttl = self._closed_ttl + RUNNING_EXTRA_TTL_S
        self._append = client.register_script(APPEND_SCRIPT)
        # For each turn, a run of consecutive entries: [the first one's event id, frame, frame, …]; an empty frame
        # is the log's close, and ends the run. Batches that a run could not go on in wait in `_sealed`.
        self._pending: dict[str, list[Any]] = {}
        self._sealed: list[dict[str, list[Any]]] = []
        self._wakeup = asyncio.Event()
        self._stopping = False
        self._retry_at = 0.0
        self._task: asyncio.Task[None] | None = None
        self.available = True

    def start(self) -> None:
        self.metrics.redis_available.set(1)
        self._task = asyncio.create_task(self._write_forever(), name="event-log-redis")

    async def aclose(self) -> None:
        """Write what is pending (within the deadline), then close the client."""
        self._stopping = True
        self._wakeup.set()
        if self._task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._task), timeout=2 * TIMEOUT_S)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(*ERRORS):
            await self.client.aclose()

    # --- the sink: called on the relay's path, returns at once ----------------------------------------

    def frame(self, turn_id: str, event_id: int, frame: bytes) -> None:
        self._add(turn_id, event_id, frame)

    def closed(self, turn_id: str, event_id: int) -> None:
        self._add(turn_id, event_id + 1, b"")

    def _add(self, turn_id: str, slot_id: int, frame: bytes) -> None:
        run = self._pending.get(turn_id)
        if run is None:
            self._pending[turn_id] = [slot_id, frame]
        elif run[0] + len(run) - 1 == slot_id and run[-1]:
            run.append(frame)
        else:  # the turn's log closed in this batch, or a new log of it starts elsewhere: in the next batch
            self._sealed.append(self._pending)
            self._pending = {turn_id: [slot_id, frame]}
        self._wakeup.set()

    # --- writing --------------------------------------------------------------------------------------

    async def _write_forever(self) -> None:
        while self._pending or not self._stopping:
            if not self._pending:
                await self._wakeup.wait()
                self._wakeup.clear()
                if not self._stopping:
                    await asyncio.sleep(LINGER_S)
                continue
            batches, self._sealed = [*self._sealed, self._pending], []
            self._pending = {}
            for batch in batches:
                try:
                    await self._write(batch)
                except Exception:  # the writer must outlive anything a batch does
                    logger.exception("event_log.redis_write_crashed")

    async def _write(self, batch: dict[str, list[Any]]) -> None:
        if time.monotonic() < self._retry_at:
            return
        args: list[Any] = [self._running_ttl, self._closed_ttl]
        for run in batch.values():
            args.append(run[0])
            args.append(len(run) - 1)
            args += run[1:]
        try:
            async with asyncio.timeout(TIMEOUT_S):
                refused = await self._append(keys=[KEY % turn_id for turn_id in batch], args=args)
        except ERRORS as error:
            self._retry_at = time.monotonic() + RETRY_S
            self.failed("append", error)
            return
        self.answered()
        if refused:
            self.metrics.redis_errors.labels(op="append_refused").inc(int(refused))

    # --- health ---------------------------------------------------------------------------------------

    def failed(self, op: str, error: BaseException) -> None:
        self.metrics.redis_errors.labels(op=op).inc()
        if self.available:
            self.available = False
            self.metrics.redis_available.set(0)
            logger.warning(
                "event_log.redis_unavailable: %s; turns go on and are stored, each replica serves its own turns' "
                "streams from memory, and resumes of other replicas' turns get the stored turn",
                type(error).__name__,
                extra={"op": op},
            )

    def answered(self) -> None:
        if not self.available:
            self.available = True
            self.metrics.redis_available.set(1)
            logger.info("event_log.redis_available")

    # --- reading --------------------------------------------------------------------------------------

    def reader(self, turn_id: str, after: int) -> StreamReader:
        return StreamReader(self, turn_id, after)

    async def stored(self, turn_id: str) -> StoredFrames | None:
        """The turn's whole stream (XRANGE), for a process taking the turn over: its frames when none is
        missing, and its last event id; None when Redis does not answer."""
        try:
            async with asyncio.timeout(TAKEOVER_READ_TIMEOUT_S):
                entries: list[Any] = await self.client.xrange(KEY % turn_id) or []
        except ERRORS as error:
            self.failed("read", error)
            return None
        self.answered()
        frames: list[bytes] = []
        last_id = 0
        complete = True
        for entry_id, fields in entries:
            number, _, sequence = bytes(entry_id).partition(b"-")
            if sequence != b"0":  # a close, after which the turn went on (tool outputs came)
                continue
            complete = complete and int(number) == last_id + 1
            last_id = int(number)
            frames.append(fields[b"f"])
        return StoredFrames(frames if complete else [], last_id)


class StreamReader:
    """One resume of a turn from its stream; `position` is the id of the last event it has given."""

    def __init__(self, logs: RedisEventLogs, turn_id: str, after: int) -> None:
        self.logs = logs
        self.key = KEY % turn_id
        self.position = after

    async def frames(self) -> AsyncGenerator[bytes, None]:
        """Every frame after `position`, then the live ones, until the log closes. An empty chunk each time
        nothing came for `BLOCK_S`, so that the caller can look at the turn. Raises `SharedLogUnavailable`
        (having given every frame it could) when Redis fails, the stream is missing or has a gap."""
        logs = self.logs
        try:
            async with asyncio.timeout(TIMEOUT_S):
                exists = await logs.client.exists(self.key)
        except ERRORS as error:
            logs.failed("read", error)
            raise SharedLogUnavailable("redis_error") from error
        if not exists:
            raise SharedLogUnavailable("missing")
        yield PING
        last_id = b"%d-0" % self.position
        while True:
            try:
                async with asyncio.timeout(BLOCK_S + TIMEOUT_S):
                    reply = await logs.client.xread({self.key: last_id}, count=READ_COUNT, block=int(BLOCK_S * 1000))
            except ERRORS as error:
                logs.failed("read", error)
                raise SharedLogUnavailable("redis_error") from error
            logs.answered()
            entries = _entries(reply)
            if not entries:
                yield b""
                continue
            chunk: list[bytes] = []
            closed = gap = False
            for entry_id, fields in entries:
                last_id = entry_id
                number, _, sequence = entry_id.partition(b"-")
                if sequence != b"0":  # the log closed after event `number`
                    closed = True
                    continue
                closed = False
                if int(number) != self.position + 1:
                    gap = True
                    break
                chunk.append(fields[b"f"])
                self.position += 1
            if chunk:
                yield chunk[0] if len(chunk) == 1 else b"".join(chunk)
            if gap:
                raise SharedLogUnavailable("gap")
            if closed:
                return


def _entries(reply: Any) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """The one stream's entries of an XREAD reply, in the shape of either protocol (RESP2 or RESP3)."""
    if not reply:
        return []
    entries = next(iter(reply.values())) if isinstance(reply, dict) else reply[0][1]
    if entries and isinstance(entries[0], list):
        entries = entries[0]
    return [(entry_id, fields) for entry_id, fields in entries if entry_id is not None]
