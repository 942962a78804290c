"""The load generator: its own process, raw asyncio sockets on uvloop, the incremental parsers of
`bench.sse`, and one timestamp per socket read.

    python -m bench.loadgen SPEC.json RESULT.json

The spec (see `LoadSpec`) says where to connect, what each slot sends, how many slots run at once and for
how long. Every stream is a new connection (`Connection: close`), as a browser's EventSource would open.
The result holds throughput counters, time to first token, and the lag statistics of `bench.stats`.
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time
from dataclasses import dataclass, field
from typing import Any, cast

import orjson

from bench.sse import HTTPError, HTTPResponseParser, SSEParser
from bench.stats import delivery_delays, gaps, summarize

DELTA = "response.output_text.delta"
# The load generator's own loop is checked this often: a sleep that wakes late means every socket read of
# that moment waited as long, and the lag measured is the rig's, not the peer's.
LAG_PROBE_S = 0.005
TERMINAL_EVENTS = frozenset(
    {
        "response.completed",
        "response.failed",
        "response.incomplete",
        "turn.completed",
        "turn.failed",
        "turn.incomplete",
        "turn.cancelled",
        "turn.requires_action",
    }
)


@dataclass(slots=True)
class RequestSpec:
    path: str
    body: str
    headers: dict[str, str] = field(default_factory=dict)
    method: str = "POST"


@dataclass(slots=True)
class LoadSpec:
    host: str
    port: int
    requests: list[RequestSpec]
    concurrency: int
    # Slot i starts at i·stagger_s/concurrency. Each slot then runs streams back to back until it has run
    # `streams_per_slot` of them, or (without that) until `stop_starting_after_s` has passed.
    stagger_s: float = 0.0
    streams_per_slot: int | None = None
    stop_starting_after_s: float = 10.0
    timeout_s: float = 120.0
    consumer: str = "sse"  # "sse": parse everything; "trivial": count bytes and blank lines only
    tokens_per_second: float = 0.0  # the upstream's pacing, for the delivery delay
    # Throughput counts the events that arrive in [measure_from_s, measure_until_s]; lag and TTFT statistics
    # take the deltas (and first deltas) that arrive in `window` (both seconds since the run started).
    measure_from_s: float = 0.0
    measure_until_s: float | None = None
    window: tuple[float, float] | None = None
    # Several replicas of one server behind no balancer: slot i connects to ports[i % len(ports)] (a balancer
    # that pins each client), instead of `port`.
    ports: list[int] | None = None

    def slot_port(self, slot: int) -> int:
        return self.ports[slot % len(self.ports)] if self.ports else self.port

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> LoadSpec:
        values = dict(raw)
        values["requests"] = [RequestSpec(**request) for request in raw["requests"]]
        if raw.get("window") is not None:
            values["window"] = tuple(raw["window"])
        return cls(**values)


@dataclass(slots=True)
class StreamRecord:
    slot: int
    started: float  # perf_counter when the connection was opened
    port: int = 0
    connected: float = 0.0  # when the connection was made (the request is written then)
    first_byte: float = 0.0  # when the response's first bytes arrived
    status: int = 0
    events: int = 0  # every SSE event
    relayed: int = 0  # events from the upstream (not the relay's own `turn.*` events, not "[DONE]")
    deltas: list[float] = field(default_factory=list)
    terminal: str | None = None
    error: str | None = None
    ended: float = 0.0
    body_bytes: int = 0
    error_body: bytes = b""


class Counters:
    __slots__ = ("bytes", "events", "measure_from", "measure_until", "window_events")

    def __init__(self, measure_from: float, measure_until: float) -> None:
        self.measure_from = measure_from
        self.measure_until = measure_until
        self.window_events = 0
        self.events = 0
        self.bytes = 0


class StreamProtocol(asyncio.Protocol):
    """One request and its streamed response. Parses as data arrives; every event of one read shares that
    read's timestamp, which is when the load generator could first have seen it."""

    def __init__(self, request: bytes, record: StreamRecord, counters: Counters, trivial: bool) -> None:
        self.request = request
        self.record = record
        self.counters = counters
        self.trivial = trivial
        self.http = HTTPResponseParser()
        self.sse = SSEParser()
        self.finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self._last_newline = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.record.connected = time.perf_counter()
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        record = self.record
        if not record.first_byte:
            record.first_byte = now
        counters = self.counters
        counters.bytes += len(data)
        if self.trivial:
            # The cheapest consumer that still counts events: blank lines (uvicorn never splits an event).
            count = data.count(b"\n\n") + (1 if self._last_newline and data[:1] == b"\n" else 0)
            self._last_newline = data[-1:] == b"\n"
            record.events += count
            record.relayed += count
            counters.events += count
            if counters.measure_from <= now <= counters.measure_until:
                counters.window_events += count
            return
        try:
            pieces = self.http.feed(data)
        except HTTPError as error:
            self._fail(str(error))
            return
        if self.http.status != 200:
            for piece in pieces:
                record.error_body += piece
            if self.http.done:
                self._fail(f"http {self.http.status}")
            return
        relayed = 0
        for piece in pieces:
            record.body_bytes += len(piece)
            for name, _data in self.sse.feed(piece):
                record.events += 1
                if name == DELTA:
                    record.deltas.append(now)
                    relayed += 1
                elif name in TERMINAL_EVENTS:
                    if record.terminal is None or name.startswith("turn."):
                        record.terminal = name
                    if not name.startswith("turn."):
                        relayed += 1
                elif not name.startswith("turn.") and name != "[DONE]":
                    relayed += 1
        record.relayed += relayed
        counters.events += relayed
        if counters.measure_from <= now <= counters.measure_until:
            counters.window_events += relayed
        if self.http.done and self.transport is not None:
            self.transport.close()

    def eof_received(self) -> bool | None:
        if not self.trivial:
            try:
                self.http.eof()
            except HTTPError as error:
                self._fail(str(error))
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        record = self.record
        record.ended = time.perf_counter()
        record.status = self.http.status if not self.trivial else 200
        if exc is not None and record.error is None:
            record.error = f"connection lost: {type(exc).__name__}"
        if not self.trivial and record.error is None and not self.http.done:
            record.error = "connection closed mid-response"
        if not self.finished.done():
            self.finished.set_result(None)

    def _fail(self, message: str) -> None:
        if self.record.error is None:
            self.record.error = message
        if self.transport is not None:
            self.transport.close()


def encode_request(spec: LoadSpec, request: RequestSpec, port: int | None = None) -> bytes:
    body = request.body.encode()
    lines = [
        f"{request.method} {request.path} HTTP/1.1",
        f"Host: {spec.host}:{spec.port if port is None else port}",
        "Accept: text/event-stream",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *(f"{name}: {value}" for name, value in request.headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def run(spec: LoadSpec) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    ports = sorted(set(spec.ports or [spec.port]))
    encoded = {port: [encode_request(spec, request, port) for request in spec.requests] for port in ports}
    records: list[StreamRecord] = []
    protocols: set[StreamProtocol] = set()
    trivial = spec.consumer == "trivial"
    start = time.perf_counter()
    until = spec.measure_until_s if spec.measure_until_s is not None else spec.stop_starting_after_s
    counters = Counters(start + spec.measure_from_s, start + until)
    hard_deadline = start + spec.timeout_s

    async def one_stream(slot: int, done: int) -> StreamRecord:
        port = spec.slot_port(slot)
        record = StreamRecord(slot=slot, started=time.perf_counter(), port=port)
        records.append(record)
        # Slot s's k-th stream sends request (s + k·concurrency) mod len: with a list whose length is a
        # multiple of the concurrency (one Parley session each), no two slots ever share a request.
        request = encoded[port][(slot + done * spec.concurrency) % len(spec.requests)]
        try:
            _, protocol = await loop.create_connection(
                lambda: StreamProtocol(request, record, counters, trivial), spec.host, port
            )
        except OSError as error:
            record.error = f"connect: {type(error).__name__}"
            record.ended = time.perf_counter()
            return record
        protocols.add(protocol)
        try:
            await protocol.finished
        finally:
            protocols.discard(protocol)
        return record

    async def slot(index: int) -> None:
        await asyncio.sleep(index * spec.stagger_s / max(spec.concurrency, 1))
        done = 0
        while True:
            elapsed = time.perf_counter() - start
            if spec.streams_per_slot is not None:
                if done >= spec.streams_per_slot:
                    return
            elif elapsed >= spec.stop_starting_after_s:
                return
            record = await one_stream(index, done)
            done += 1
            if record.error is not None:
                await asyncio.sleep(0.05)  # a failing peer must not turn this into a hot loop

    # (when, how late) of each wake-up of a sleep of LAG_PROBE_S.
    lateness: list[tuple[float, float]] = []

    async def watch_own_lag() -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(LAG_PROBE_S)
            now = time.perf_counter()
            lateness.append((now, now - before - LAG_PROBE_S))

    watcher = asyncio.ensure_future(watch_own_lag())
    usage_before = resource.getrusage(resource.RUSAGE_SELF)
    tasks = [asyncio.ensure_future(slot(index)) for index in range(spec.concurrency)]
    _, pending = await asyncio.wait(tasks, timeout=max(hard_deadline - time.perf_counter(), 0.1))
    timed_out = bool(pending)
    for task in pending:
        task.cancel()
    for protocol in list(protocols):
        if protocol.record.error is None:
            protocol.record.error = "timeout"
        if protocol.transport is not None:
            protocol.transport.abort()
    if pending:
        await asyncio.wait(pending, timeout=5)
    watcher.cancel()
    end = time.perf_counter()
    usage_after = resource.getrusage(resource.RUSAGE_SELF)
    cpu_s = (usage_after.ru_utime - usage_before.ru_utime) + (usage_after.ru_stime - usage_before.ru_stime)
    result = summarize_run(spec, records, counters, start=start, end=end, cpu_s=cpu_s, timed_out=timed_out)
    low, high = (start + spec.window[0], start + spec.window[1]) if spec.window else (start, end)
    result["own_loop_lag_ms"] = summarize((late for at, late in lateness if low <= at <= high), scale=1000)
    return result


def summarize_run(
    spec: LoadSpec,
    records: list[StreamRecord],
    counters: Counters,
    *,
    start: float,
    end: float,
    cpu_s: float,
    timed_out: bool,
) -> dict[str, Any]:
    ok = [r for r in records if r.error is None and (r.terminal is not None or spec.consumer == "trivial")]
    errors: dict[str, int] = {}
    error_bodies: list[str] = []
    for record in records:
        if record.error is not None or (record.terminal is None and spec.consumer != "trivial"):
            key = record.error or "no terminal event"
            errors[key] = errors.get(key, 0) + 1
            if record.error_body and len(error_bodies) < 3:
                error_bodies.append(record.error_body[:300].decode(errors="replace"))
    window = spec.window
    low, high = (start + window[0], start + window[1]) if window else (start, end)
    ttfts: list[float] = []
    # TTFT's first two parts: opening the connection, and the request's wait for the response's first bytes.
    connects: list[float] = []
    first_bytes: list[float] = []
    gap_values: list[float] = []
    delay_values: list[float] = []
    for record in ok:
        if not record.deltas:
            continue
        if low <= record.deltas[0] <= high:
            ttfts.append(record.deltas[0] - record.started)
            connects.append(record.connected - record.started)
            first_bytes.append(record.first_byte - record.connected)
        if spec.tokens_per_second > 0:
            arrivals = record.deltas
            delays = delivery_delays(arrivals, spec.tokens_per_second)
            stream_gaps = gaps(arrivals)
            for index, arrival in enumerate(arrivals):
                if low <= arrival <= high:
                    delay_values.append(delays[index])
                    if index > 0:
                        gap_values.append(stream_gaps[index - 1])
    measured = min(counters.measure_until, end) - counters.measure_from
    terminals: dict[str, int] = {}
    for record in ok:
        terminals[record.terminal or "-"] = terminals.get(record.terminal or "-", 0) + 1
    first_start = min((r.started for r in records), default=start)
    last_end = max((r.ended for r in records), default=end)
    # Completed streams per port, when the slots were spread over replicas: how evenly they shared the load.
    by_port: dict[str, int] = {}
    if spec.ports:
        for record in ok:
            by_port[str(record.port)] = by_port.get(str(record.port), 0) + 1
    return {
        "ok_by_port": by_port,
        "streams": len(records),
        "ok": len(ok),
        "errors": errors,
        "error_bodies": error_bodies,
        "timed_out": timed_out,
        "terminals": terminals,
        "elapsed_s": end - start,
        "active_s": last_end - first_start,
        "loadgen_cpu_s": cpu_s,
        "loadgen_cpu_share": cpu_s / (end - start) if end > start else None,
        "events": counters.events,
        "bytes": counters.bytes,
        "window_events": counters.window_events,
        "measured_s": measured,
        "events_per_s": counters.window_events / measured if measured > 0 else None,
        "streams_per_s": len(ok) / (last_end - first_start) if last_end > first_start else None,
        "events_per_stream": summarize(r.relayed for r in ok),
        "deltas_per_stream": summarize(len(r.deltas) for r in ok),
        "ttft_ms": summarize(ttfts, scale=1000),
        "connect_ms": summarize(connects, scale=1000),
        "first_byte_ms": summarize(first_bytes, scale=1000),
        "gap_ms": summarize(gap_values, scale=1000),
        "delay_ms": summarize(delay_values, scale=1000),
        "stream_s": summarize(r.ended - r.started for r in ok),
    }


def main(argv: list[str]) -> int:
    spec_path, result_path = argv
    with open(spec_path, "rb") as handle:
        spec = LoadSpec.from_json(json.load(handle))
    import uvloop

    result = uvloop.run(run(spec))
    with open(result_path, "wb") as handle:
        handle.write(orjson.dumps(result, option=orjson.OPT_SERIALIZE_NUMPY))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
