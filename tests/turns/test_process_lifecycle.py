"""`parley serve` as a process: SIGTERM with open streams (reliability F-14), SIGKILL mid-turn and the next
process reconciling the turn (F-18), and resuming a dead process's turn from another one.

Real processes on loopback: the simulator runs in a thread of the test process, `parley serve` runs as a
subprocess on a throw-away database, and the test reads the database directly to see what was stored.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.base import utcnow
from app.db.engine import build_engine
from app.db.ids import new_id
from app.db.models import Turn, UsageRecord
from app.simulator import create_simulator_app
from tests.databases import BACKENDS, database
from tests.servers import free_port, redis_server, serve

PARLEY = str(Path(sys.executable).parent / "parley")
ADMIN_TOKEN = "lifecycle-admin-" + uuid.uuid4().hex
IN_FLIGHT = ("queued", "in_progress")
TERMINAL_EVENTS = ("turn.completed", "turn.incomplete", "turn.failed", "turn.cancelled", "turn.requires_action")
DELTA = "response.output_text.delta"
GRACE_S = 2.0
# A turn of 400 tokens at 20 tokens/s takes ~20 s: long enough to still be running at every signal below.
SLOW = {"tokens_per_second": 20, "first_token_delay_ms": 0, "output_tokens": 400}
FAST = {"tokens_per_second": 0, "first_token_delay_ms": 0, "output_tokens": 8}


# --- the processes ------------------------------------------------------------------------------------


@dataclass
class Simulator:
    base_url: str
    http: httpx.AsyncClient

    async def configure(self, **config: Any) -> None:
        response = await self.http.post(f"{self.base_url}/_control/config", json=config)
        assert response.status_code == 200, response.text

    async def next_faults(self, *faults: dict[str, Any]) -> None:
        response = await self.http.post(f"{self.base_url}/_control/next", json={"faults": list(faults)})
        assert response.status_code == 200, response.text

    async def response_creates(self) -> int:
        requests = (await self.http.get(f"{self.base_url}/_control/requests")).json()
        return sum(1 for r in requests if r["method"] == "POST" and r["path"] == "/v1/responses")

    async def retrieve(self, response_id: str) -> dict[str, Any]:
        response = await self.http.get(
            f"{self.base_url}/v1/responses/{response_id}", headers={"Authorization": "Bearer sk-test"}
        )
        assert response.status_code == 200, response.text
        return dict(response.json())

    async def status_of(self, response_id: str) -> int:
        response = await self.http.get(
            f"{self.base_url}/v1/responses/{response_id}", headers={"Authorization": "Bearer sk-test"}
        )
        return response.status_code

    async def conversation_messages(self, conversation_id: str) -> list[tuple[str, str]]:
        listed = await self.http.get(
            f"{self.base_url}/v1/conversations/{conversation_id}/items",
            params={"order": "asc", "limit": 100},
            headers={"Authorization": "Bearer sk-test"},
        )
        assert listed.status_code == 200, listed.text
        return [
            (item["role"], "".join(part.get("text", "") for part in item["content"]))
            for item in listed.json()["data"]
            if item["type"] == "message"
        ]


@contextmanager
def running_simulator() -> Iterator[str]:
    with serve(create_simulator_app()) as base_url:
        yield base_url


@dataclass
class ParleyProcess:
    process: subprocess.Popen[bytes]
    base_url: str
    log_path: Path

    @property
    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def wait_exit(self, timeout: float) -> int | None:
        deadline = time.monotonic() + timeout
        while self.process.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return self.process.poll()


def parley_env(*, database_url: str, simulator_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PARLEY_", "OPENAI_"))}
    env.update(
        OPENAI_API_KEY="sk-test",
        OPENAI_BASE_URL=f"{simulator_url}/v1",
        PARLEY_DATABASE_URL=database_url,
        PARLEY_ADMIN_TOKEN=ADMIN_TOKEN,
        # Shared by every process on the database, as replicas share it: stream tokens outlive a restart.
        PARLEY_SECRET_KEY="lifecycle-secret-" + "x" * 32,
        PARLEY_SHUTDOWN_GRACE_S=str(GRACE_S),
        PARLEY_TURN_LEASE_S="1.2",
    )
    env.update(extra)
    return env


@asynccontextmanager
async def parley_serve(workdir: Path, env: dict[str, str]) -> AsyncIterator[ParleyProcess]:
    """`parley serve` on a free port, up once /healthz answers; killed on the way out if still running.

    Its output goes to a file, not a pipe: a pipe nobody reads fills up and blocks the server's logging.
    """
    port = free_port()
    log_path = workdir / f"parley-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [PARLEY, "serve", "--port", str(port)],
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    served = ParleyProcess(process=process, base_url=f"http://127.0.0.1:{port}", log_path=log_path)
    try:
        deadline = time.monotonic() + 30
        async with httpx.AsyncClient(timeout=1) as http:
            while True:
                try:
                    if (await http.get(f"{served.base_url}/healthz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"parley serve did not start:\n{served.output}")
                await asyncio.sleep(0.05)
        yield served
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


# --- the API as a client uses it --------------------------------------------------------------------------


@dataclass
class SseEvent:
    id: int
    name: str
    data: dict[str, Any]
    retry: int | None


@dataclass
class StreamRecord:
    """Everything one SSE response delivered, as it arrives."""

    events: list[SseEvent] = field(default_factory=list)
    status_code: int | None = None
    transport_error: str | None = None
    ended: bool = False
    progressed: asyncio.Event = field(default_factory=asyncio.Event)
    wanted_deltas: int = 3

    @property
    def ids(self) -> list[int]:
        return [e.id for e in self.events]

    @property
    def names(self) -> list[str]:
        return [e.name for e in self.events]

    @property
    def text(self) -> str:
        return "".join(str(e.data["delta"]) for e in self.events if e.name == DELTA)

    @property
    def terminals(self) -> list[SseEvent]:
        return [e for e in self.events if e.name in TERMINAL_EVENTS]

    @property
    def turn_id(self) -> str:
        assert self.events, "no event at all"
        assert self.events[0].name == "turn.created", self.names[:3]
        return str(self.events[0].data["turn"]["id"])

    @property
    def response_id(self) -> str | None:
        for event in self.events:
            if event.name == "response.created":
                return str(event.data["response"]["id"])
        return None

    def add(self, event: SseEvent) -> None:
        self.events.append(event)
        if sum(1 for e in self.events if e.name == DELTA) >= self.wanted_deltas:
            self.progressed.set()


async def read_sse(response: httpx.Response, record: StreamRecord) -> None:
    """Parse `id:` / `event:` / `data:` / `retry:` fields per the SSE spec; comments (`: ping`) are skipped."""
    fields: dict[str, str] = {}
    async for line in response.aiter_lines():
        if line == "":
            if "data" in fields:
                record.add(
                    SseEvent(
                        id=int(fields["id"]),
                        name=fields.get("event", "message"),
                        data=json.loads(fields["data"]),
                        retry=int(fields["retry"]) if "retry" in fields else None,
                    )
                )
            fields = {}
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        fields[name] = f"{fields[name]}\n{value}" if name == "data" and name in fields else value


async def follow(http: httpx.AsyncClient, method: str, url: str, record: StreamRecord, **kwargs: Any) -> StreamRecord:
    """Read one streamed response into `record` until it ends or the connection breaks."""
    try:
        async with http.stream(method, url, **kwargs) as response:
            record.status_code = response.status_code
            if response.status_code == 200:
                await read_sse(response, record)
            else:
                await response.aread()
        record.ended = True
    except httpx.TransportError as error:
        record.transport_error = type(error).__name__
    finally:
        record.progressed.set()
    return record


@dataclass
class Api:
    http: httpx.AsyncClient
    key: str = ""
    user_id: str = ""

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    @classmethod
    async def with_new_user(cls, http: httpx.AsyncClient) -> Api:
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        created = await http.post("/v1/admin/users", json={"name": f"user-{uuid.uuid4().hex[:10]}"}, headers=admin)
        assert created.status_code == 201, created.text
        key = await http.post(f"/v1/admin/users/{created.json()['id']}/keys", json={}, headers=admin)
        assert key.status_code == 201, key.text
        return cls(http=http, key=key.json()["key"], user_id=created.json()["id"])

    async def new_session(self) -> str:
        response = await self.http.post("/v1/sessions", json={"title": "lifecycle"}, headers=self.headers)
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    def start_stream(
        self, session_id: str, text: str, *, idempotency_key: str | None = None, wanted_deltas: int = 3
    ) -> tuple[StreamRecord, asyncio.Task[StreamRecord]]:
        record = StreamRecord(wanted_deltas=wanted_deltas)
        headers = dict(self.headers)
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        task = asyncio.create_task(
            follow(
                self.http,
                "POST",
                f"/v1/sessions/{session_id}/messages",
                record,
                json={"input": text},
                headers=headers,
            )
        )
        return record, task

    async def send_and_wait(self, session_id: str, text: str, *, idempotency_key: str | None = None) -> httpx.Response:
        headers = dict(self.headers)
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        return await self.http.post(
            f"/v1/sessions/{session_id}/messages", json={"input": text, "stream": False}, headers=headers
        )


def new_client(base_url: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=base_url, timeout=httpx.Timeout(20, connect=5))


async def until_progressed(records: list[StreamRecord], timeout: float = 15) -> None:
    await asyncio.wait_for(asyncio.gather(*(r.progressed.wait() for r in records)), timeout)
    for record in records:
        assert record.status_code == 200, (record.status_code, record.transport_error)
        assert record.transport_error is None, record.transport_error
        assert sum(1 for e in record.events if e.name == DELTA) >= record.wanted_deltas, record.names


async def cancel_all(tasks: list[asyncio.Task[StreamRecord]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


# --- the database, read directly ------------------------------------------------------------------------


async def kill_once_progressed(
    parley: ParleyProcess,
    record: StreamRecord,
    task: asyncio.Task[StreamRecord],
    *,
    stored_in: AsyncEngine | None = None,
) -> None:
    """SIGKILL the process once the stream it serves has brought its wanted deltas, and (with `stored_in`) once
    the turn's response id is stored there, as it is a moment after a turn's start: a kill before that leaves
    nobody able to continue the turn (it ends interrupted, tested on its own). The stream then breaks."""
    try:
        await until_progressed([record])
        if stored_in is not None:
            await poll_row(stored_in, record.turn_id, lambda row: bool(row.response_ids), timeout=10)
        parley.process.kill()
        assert await parley.wait_exit(10) is not None
        await asyncio.wait_for(task, 10)
    finally:
        await cancel_all([task])


@asynccontextmanager
async def engine_for(url: str) -> AsyncIterator[AsyncEngine]:
    engine = build_engine(url)
    try:
        yield engine
    finally:
        await engine.dispose()


async def turns_of(engine: AsyncEngine, session_ids: list[str]) -> list[Any]:
    async with engine.connect() as connection:
        rows = await connection.execute(select(Turn).where(Turn.session_id.in_(session_ids)).order_by(Turn.id))
        return list(rows.all())


async def turn_row(engine: AsyncEngine, turn_id: str) -> Any:
    async with engine.connect() as connection:
        row = (await connection.execute(select(Turn).where(Turn.id == turn_id))).one_or_none()
    assert row is not None, f"no row for {turn_id}"
    return row


async def usage_rows(engine: AsyncEngine, turn_ids: list[str]) -> list[Any]:
    async with engine.connect() as connection:
        return list((await connection.execute(select(UsageRecord).where(UsageRecord.turn_id.in_(turn_ids)))).all())


async def poll_row(engine: AsyncEngine, turn_id: str, done: Any, *, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        row = await turn_row(engine, turn_id)
        if done(row) or time.monotonic() > deadline:
            return row
        await asyncio.sleep(0.1)


# --- assertions on a stream ------------------------------------------------------------------------------


def assert_well_formed(record: StreamRecord) -> SseEvent:
    """Ids 1..n with no gap or repeat, `retry:` on the first event, exactly one terminal event, last."""
    assert record.ids == list(range(1, len(record.events) + 1)), record.ids
    assert record.events[0].name == "turn.created"
    assert record.events[0].retry is not None
    assert len(record.terminals) == 1, record.names[-5:]
    assert record.events[-1] is record.terminals[0], record.names[-5:]
    return record.terminals[0]


# --- the tests --------------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", BACKENDS)
async def test_sigterm_drains_open_streams_and_exits(backend: str, tmp_path: Path) -> None:
    """F-14: three streams open at SIGTERM each end with one terminal event, nothing new starts, the
    process exits in time, and no turn is left in flight (each keeps its partial text and response id)."""
    async with database(backend, tmp_path) as url, engine_for(url) as engine:
        with running_simulator() as simulator_url:
            async with httpx.AsyncClient(timeout=10) as control:
                simulator = Simulator(simulator_url, control)
                await simulator.configure(**SLOW)
                env = parley_env(database_url=url, simulator_url=simulator_url)
                async with parley_serve(tmp_path, env) as parley, new_client(parley.base_url) as http:
                    api = await Api.with_new_user(http)
                    sessions = [await api.new_session() for _ in range(4)]
                    started = [
                        api.start_stream(s, f"Tell me a long story, number {i}.") for i, s in enumerate(sessions[:3])
                    ]
                    records, tasks = [r for r, _ in started], [t for _, t in started]
                    try:
                        await until_progressed(records)
                        signalled_at = time.monotonic()
                        parley.process.send_signal(signal.SIGTERM)

                        # A new turn during the drain: refused with 503, or the listener is already closed.
                        async with new_client(parley.base_url) as late:
                            try:
                                refused = await late.post(
                                    f"/v1/sessions/{sessions[3]}/messages",
                                    json={"input": "one more?"},
                                    headers=api.headers,
                                )
                            except httpx.TransportError:
                                pass
                            else:
                                assert refused.status_code == 503, refused.text
                                assert refused.json()["error"]["code"] == "shutting_down"

                        await asyncio.wait_for(asyncio.gather(*tasks), GRACE_S + 10)
                        code = await parley.wait_exit(GRACE_S + 10 - (time.monotonic() - signalled_at))
                    finally:
                        await cancel_all(tasks)
                    output = parley.output

                    assert code is not None, f"still running {GRACE_S + 10} s after SIGTERM:\n{output[-3000:]}"
                    for record in records:
                        assert record.transport_error is None, (record.transport_error, output[-3000:])
                        assert record.ended
                        terminal = assert_well_formed(record)
                        turn = terminal.data["turn"]
                        assert turn["id"] == record.turn_id
                        if terminal.name == "turn.incomplete":
                            assert turn["status"] == "incomplete"
                            assert turn["error"]["code"] == "interrupted", turn["error"]
                        else:
                            assert terminal.name == "turn.completed", terminal.name
                        assert record.text, "no delta before the signal?"
                        assert turn["output_text"] == record.text
                        assert turn["response_ids"] == [record.response_id]

                assert await simulator.response_creates() == len(records)
            rows = await turns_of(engine, sessions)
            assert [r.session_id for r in rows if r.session_id == sessions[3]] == [], "a turn started during the drain"
            assert sorted(r.id for r in rows) == sorted(r.turn_id for r in records)
            by_id = {r.id: r for r in rows}
            for record in records:
                row = by_id[record.turn_id]
                terminal_turn = record.terminals[0].data["turn"]
                assert row.status not in IN_FLIGHT
                assert row.status == terminal_turn["status"]
                assert row.output_text == record.text
                assert row.response_ids == [record.response_id]
                assert row.last_event_id == record.events[-1].id
            usage = await usage_rows(engine, [r.turn_id for r in records])
            assert sorted(u.response_id for u in usage) == sorted(str(r.response_id) for r in records)
            # Last: a graceful shutdown is a clean exit, not death by the signal that asked for it.
            assert code == 0, f"exit code {code} after a completed graceful shutdown:\n{output[-1500:]}"


@dataclass
class KilledMidTurn:
    api: Api
    streaming: StreamRecord  # was relaying deltas; sent with `streaming_key`
    streaming_session: str
    streaming_key: str
    silent: StreamRecord  # its upstream had sent nothing yet: no response id; sent with SILENT_KEY
    silent_session: str


SILENT_KEY = "silent-1"


async def _kill_mid_turn(
    tmp_path: Path, simulator: Simulator, env: dict[str, str], engine: AsyncEngine
) -> KilledMidTurn:
    """Parley runs two turns: one relaying deltas, one whose upstream stalls before its first event; then
    the process is SIGKILLed."""
    async with parley_serve(tmp_path, env) as parley, new_client(parley.base_url) as http:
        api = await Api.with_new_user(http)
        streaming_session, silent_session = await api.new_session(), await api.new_session()
        await simulator.configure(**SLOW)
        await simulator.next_faults({"kind": "stall", "after_events": 0, "seconds": 60})
        key = f"streaming-{uuid.uuid4().hex}"
        silent, silent_task = api.start_stream(silent_session, "Say nothing yet.", idempotency_key=SILENT_KEY)
        tasks = [silent_task]
        try:
            # turn.created arrives once the upstream answered with headers: the stall fault is taken.
            deadline = time.monotonic() + 10
            while not silent.events and not silent_task.done() and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            assert silent.names == ["turn.created"], (silent.status_code, silent.names)
            streaming, streaming_task = api.start_stream(
                streaming_session, "Tell me a long story.", idempotency_key=key
            )
            tasks.append(streaming_task)
            await until_progressed([streaming])
            assert silent.names == ["turn.created"], silent.names
            # The response id is stored early by a side write, off the relay's path: kill after it landed.
            stored = await poll_row(engine, streaming.turn_id, lambda row: bool(row.response_ids), timeout=10)
            assert stored.response_ids, "the streaming turn's response id was never stored"
            parley.process.kill()
            assert await parley.wait_exit(10) is not None
            await asyncio.wait_for(asyncio.gather(*tasks), 10)
        finally:
            await cancel_all(tasks)
        assert streaming.transport_error is not None, "a killed process's stream cannot end cleanly"
        assert not streaming.terminals
    return KilledMidTurn(api, streaming, streaming_session, key, silent, silent_session)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", BACKENDS)
async def test_sigkill_mid_turn_then_restart_reconciles(backend: str, tmp_path: Path) -> None:
    """F-18, without background mode: turns a SIGKILLed process left in flight are finished by the next process,
    both failed/interrupted, and their sessions go on. The upstream stopped the response that lost its client and
    kept nothing of it: the answer died with the process (background mode keeps it: the next test)."""
    async with database(backend, tmp_path) as url, engine_for(url) as engine:
        with running_simulator() as simulator_url:
            async with httpx.AsyncClient(timeout=10) as control:
                simulator = Simulator(simulator_url, control)
                env = parley_env(database_url=url, simulator_url=simulator_url, PARLEY_UPSTREAM_BACKGROUND="false")
                killed = await _kill_mid_turn(tmp_path, simulator, env, engine)
                api, streaming, silent = killed.api, killed.streaming, killed.silent
                response_id = streaming.response_id
                assert response_id is not None

                # What the dead process left behind.
                left = await turn_row(engine, streaming.turn_id)
                assert left.status == "in_progress"
                assert left.response_ids == [response_id]
                assert (await turn_row(engine, silent.turn_id)).status == "in_progress"
                assert (await turn_row(engine, silent.turn_id)).response_ids == []

                await simulator.configure(**FAST)
                async with parley_serve(tmp_path, env) as parley, new_client(parley.base_url) as http:
                    api.http = http
                    row = await poll_row(engine, streaming.turn_id, lambda r: r.status not in IN_FLIGHT, timeout=10)
                    silent_row = await poll_row(engine, silent.turn_id, lambda r: r.status not in IN_FLIGHT, timeout=10)

                    assert await simulator.status_of(response_id) == 404
                    assert row.status == "failed", (row.status, row.error, parley.output[-2000:])
                    assert row.error["code"] == "interrupted", row.error
                    assert row.response_ids == [response_id]
                    assert row.output_text == ""
                    assert row.cost_usd is None
                    assert await usage_rows(engine, [row.id]) == []

                    assert silent_row.status == "failed", silent_row.status
                    assert silent_row.error["code"] == "interrupted", silent_row.error
                    assert silent_row.response_ids == []

                    via_api = await http.get(
                        f"/v1/sessions/{killed.streaming_session}/turns/{streaming.turn_id}", headers=api.headers
                    )
                    assert via_api.status_code == 200
                    assert via_api.json()["status"] == "failed"
                    assert via_api.json()["error"]["code"] == "interrupted"

                    # The same Idempotency-Key again: the stored turn, not a second upstream call.
                    creates = await simulator.response_creates()
                    replay = await api.send_and_wait(
                        killed.streaming_session, "Tell me a long story.", idempotency_key=killed.streaming_key
                    )
                    assert replay.status_code == 200, replay.text
                    assert replay.json()["id"] == streaming.turn_id
                    assert replay.json()["status"] == row.status
                    assert await simulator.response_creates() == creates

                    # Both sessions take new messages again (no 409 turn_in_progress).
                    for session_id in (killed.streaming_session, killed.silent_session):
                        after = await api.send_and_wait(session_id, "Are you back?")
                        assert after.status_code == 200, after.text
                        assert after.json()["status"] == "completed", after.json()

                    # Nothing reached the upstream for the silent turn: its key may start a new turn.
                    retried = await api.send_and_wait(
                        killed.silent_session, "Say nothing yet.", idempotency_key=SILENT_KEY
                    )
                    assert retried.status_code == 200, retried.text
                    assert retried.json()["id"] != silent.turn_id
                    assert retried.json()["status"] == "completed"


@pytest.mark.timeout(90)
@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_restarted_process_finishes_the_turn_its_predecessor_left(backend: str, tmp_path: Path) -> None:
    """In background mode (the default) the response outlives the process that relayed it. The process is
    SIGKILLed mid-answer and started again: within the lease it takes the turn over, re-attaches to the response
    and finishes it. The browser that re-attaches with the last id it got hears the rest with no gap and no
    repeat, and the stored turn, its ledger row and the conversation are those of an undisturbed turn: the whole
    answer, one upstream response, no second create."""
    async with database(backend, tmp_path) as url, engine_for(url) as engine:
        with running_simulator() as simulator_url:
            async with httpx.AsyncClient(timeout=10) as control:
                simulator = Simulator(simulator_url, control)
                await simulator.configure(tokens_per_second=25, first_token_delay_ms=0, output_tokens=150)
                env = parley_env(database_url=url, simulator_url=simulator_url)
                async with parley_serve(tmp_path, env) as parley, new_client(parley.base_url) as http:
                    api = await Api.with_new_user(http)
                    session_id = await api.new_session()
                    conversation = (await http.get(f"/v1/sessions/{session_id}", headers=api.headers)).json()[
                        "conversation_id"
                    ]
                    record, task = api.start_stream(session_id, "Tell me a long story.", wanted_deltas=6)
                    await kill_once_progressed(parley, record, task, stored_in=engine)
                response_id = record.response_id
                assert response_id is not None
                creates = await simulator.response_creates()
                seen = record.ids[-1]
                stream_url = str(record.events[0].data["turn"]["stream_url"])

                async with parley_serve(tmp_path, env) as parley, new_client(parley.base_url) as http:
                    api.http = http
                    restarted = time.monotonic()
                    # The browser re-attaches at once, before the lease has run out: it waits, then hears the rest.
                    relative = httpx.URL(stream_url).copy_with(scheme=None, host=None, port=None)
                    resumed = await follow(
                        http, "GET", str(relative), StreamRecord(), headers={"Last-Event-ID": str(seen)}
                    )
                    row = await poll_row(engine, record.turn_id, lambda r: r.status not in IN_FLIGHT, timeout=20)
                    upstream = await simulator.retrieve(response_id)

                    assert row.status == "completed", (row.status, row.error, parley.output[-3000:])
                    assert "turn.taken_over" in parley.output
                    assert time.monotonic() - restarted < 15
                    assert resumed.status_code == 200
                    assert resumed.ids == list(range(seen + 1, seen + 1 + len(resumed.ids))), "a gap or a repeat"
                    assert [e.name for e in resumed.terminals] == ["turn.completed"]
                    whole = record.text + resumed.text
                    assert upstream["status"] == "completed"
                    assert whole == row.output_text == resumed.terminals[0].data["turn"]["output_text"]
                    assert row.output_text == "".join(
                        part["text"]
                        for item in upstream["output"]
                        if item["type"] == "message"
                        for part in item["content"]
                    )
                    assert row.response_ids == [response_id]
                    (usage,) = await usage_rows(engine, [row.id])
                    assert usage.response_id == response_id
                    assert usage.output_tokens == upstream["usage"]["output_tokens"] > 0
                    assert row.cost_usd is not None
                    assert row.cost_usd > 0
                    assert await simulator.response_creates() == creates
                    assert await simulator.conversation_messages(conversation) == [
                        ("user", "Tell me a long story."),
                        ("assistant", row.output_text),
                    ]
                    after = await api.send_and_wait(session_id, "Are you back?")
                    assert after.status_code == 200, after.text
                    assert after.json()["status"] == "completed", after.json()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_cancel_asked_before_a_crash_stays_cancelled(backend: str, tmp_path: Path) -> None:
    """A cancel reached another replica, and the process running the turn died before it heard of it: the
    reconciled turn is `cancelled` (someone asked), with the upstream's text and usage, not `interrupted`."""
    async with database(backend, tmp_path) as url, engine_for(url) as engine:
        with running_simulator() as simulator_url:
            async with httpx.AsyncClient(timeout=10) as control:
                simulator = Simulator(simulator_url, control)
                await simulator.configure(**SLOW)
                env = parley_env(database_url=url, simulator_url=simulator_url)
                # The runner looks for cancels recorded by other replicas once an hour: it dies first.
                deaf = {**env, "PARLEY_RUNNER_CANCEL_POLL_INTERVAL_S": "3600"}
                async with (
                    parley_serve(tmp_path, deaf) as running,
                    parley_serve(tmp_path, env) as other,
                    new_client(running.base_url) as http,
                    new_client(other.base_url) as other_http,
                ):
                    api = await Api.with_new_user(http)
                    session_id = await api.new_session()
                    record, task = api.start_stream(session_id, "Tell me a long story.")
                    try:
                        await until_progressed([record])
                        await poll_row(engine, record.turn_id, lambda row: bool(row.response_ids), timeout=10)
                        cancel = asyncio.create_task(
                            other_http.post(
                                f"/v1/sessions/{session_id}/turns/{record.turn_id}/cancel", headers=api.headers
                            )
                        )
                        asked = await poll_row(
                            engine, record.turn_id, lambda row: row.cancel_requested_at is not None, timeout=10
                        )
                        assert asked.status == "in_progress", asked.status
                        running.process.kill()
                        assert await running.wait_exit(10) is not None
                        # The other replica reconciles the dead one's turn while its cancel request waits.
                        answered = await asyncio.wait_for(cancel, 20)
                    finally:
                        await cancel_all([task])
                    assert answered.status_code == 200, answered.text
                    turn = answered.json()
                    assert turn["status"] == "cancelled", (turn["status"], turn["error"], other.output[-2000:])
                    assert turn["error"] is None
                    response_id = record.response_id
                    assert turn["response_ids"] == [response_id]
                    assert turn["output_text"].startswith(record.text)
                    assert (await simulator.retrieve(str(response_id)))["status"] == "cancelled"
                    assert [u.response_id for u in await usage_rows(engine, [record.turn_id])] == [response_id]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", BACKENDS)
async def test_events_of_a_turn_finished_by_a_dead_process(backend: str, tmp_path: Path) -> None:
    """A turn finished (and stored) by a process that then died: another process serves its terminal event
    with the id the first one gave it, and 204 to a client that already has it."""
    async with database(backend, tmp_path) as url:
        with running_simulator() as simulator_url:
            async with httpx.AsyncClient(timeout=10) as control:
                simulator = Simulator(simulator_url, control)
                await simulator.configure(**FAST)
                env = parley_env(database_url=url, simulator_url=simulator_url)
                async with parley_serve(tmp_path, env) as first, new_client(first.base_url) as http:
                    api = await Api.with_new_user(http)
                    session_id = await api.new_session()
                    record, task = api.start_stream(session_id, "Hello there.", wanted_deltas=1)
                    await asyncio.wait_for(task, 15)
                    terminal = assert_well_formed(record)
                    assert terminal.name == "turn.completed"
                    stream_url = str(record.events[0].data["turn"]["stream_url"])
                    first.process.kill()
                    assert await first.wait_exit(10) is not None

                async with parley_serve(tmp_path, env) as second, new_client(second.base_url) as http:
                    events = f"/v1/sessions/{session_id}/turns/{record.turn_id}/events"

                    replayed = await follow(http, "GET", events, StreamRecord(), headers=api.headers)
                    assert replayed.status_code == 200
                    assert [(e.id, e.name) for e in replayed.events] == [(terminal.id, terminal.name)]
                    stored = replayed.events[0].data["turn"]
                    assert stored["status"] == "completed"
                    assert stored["output_text"] == terminal.data["turn"]["output_text"] == record.text
                    assert stored["response_ids"] == terminal.data["turn"]["response_ids"]

                    # An EventSource re-attaching with the stream_url token it was given by the dead process.
                    # (Replicas sit behind one public URL; here the new process has a new port.)
                    relative = httpx.URL(stream_url).copy_with(scheme=None, host=None, port=None)
                    resumed = await follow(
                        http, "GET", str(relative), StreamRecord(), headers={"Last-Event-ID": str(terminal.id - 1)}
                    )
                    assert resumed.status_code == 200
                    assert [(e.id, e.name) for e in resumed.events] == [(terminal.id, terminal.name)]

                    for after in (terminal.id, terminal.id + 5):
                        done = await http.get(events, headers={**api.headers, "Last-Event-ID": str(after)})
                        assert done.status_code == 204, (after, done.status_code, done.text)
                        assert done.content == b""
                    by_query = await http.get(events, params={"last_event_id": terminal.id}, headers=api.headers)
                    assert by_query.status_code == 204


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", BACKENDS)
async def test_resume_of_a_reconciled_turn_delivers_its_terminal_event(backend: str, tmp_path: Path) -> None:
    """A browser was reading a turn when its process died; it re-attaches to another process with the last
    id it got. The turn has been reconciled since: the browser must get its terminal event (with a later
    id), not a 204, which tells an EventSource there is nothing more and leaves the answer hanging."""
    async with database(backend, tmp_path) as url, engine_for(url) as engine:
        with running_simulator() as simulator_url:
            env = parley_env(database_url=url, simulator_url=simulator_url)
            async with parley_serve(tmp_path, env) as parley, new_client(parley.base_url) as http:
                api = await Api.with_new_user(http)
                session_id = await api.new_session()
                # The row a dead process leaves: in flight, its runner gone, nothing upstream stored yet.
                turn_id = new_id("turn")
                async with engine.begin() as connection:
                    await connection.execute(
                        insert(Turn).values(
                            id=turn_id,
                            session_id=session_id,
                            user_id=api.user_id,
                            status="in_progress",
                            input="Hello?",
                            request={"input": [{"role": "user", "content": "Hello?"}]},
                            output_text="",
                            response_ids=[],
                            runner_id="runner_dead_" + uuid.uuid4().hex[:8],
                            created_at=utcnow(),
                        )
                    )
                row = await poll_row(engine, turn_id, lambda r: r.status not in IN_FLIGHT, timeout=10)
                assert row.status == "failed", row.status
                assert row.error["code"] == "interrupted", row.error

                seen = 5  # turn.created, response.created, … as the dead process had numbered them
                events = f"/v1/sessions/{session_id}/turns/{turn_id}/events"
                resumed = await follow(
                    http, "GET", events, StreamRecord(), headers={**api.headers, "Last-Event-ID": str(seen)}
                )
                assert resumed.status_code == 200, f"{resumed.status_code}: the terminal event was never delivered"
                assert [e.name for e in resumed.events] == ["turn.failed"]
                assert resumed.events[0].id > seen
                assert resumed.events[0].data["turn"]["error"]["code"] == "interrupted"


@dataclass
class ReplicaPair:
    """Two `parley serve` replicas on one Postgres database and one redis-server, in front of one simulator."""

    engine: AsyncEngine
    simulator: Simulator
    a: ParleyProcess
    b: ParleyProcess
    http_a: httpx.AsyncClient
    http_b: httpx.AsyncClient


@asynccontextmanager
async def replica_pair(tmp_path: Path, **simulator_config: Any) -> AsyncIterator[ReplicaPair]:
    async with database("postgres", tmp_path) as url, engine_for(url) as engine:
        with running_simulator() as simulator_url, redis_server() as redis:
            async with httpx.AsyncClient(timeout=10) as control:
                simulator = Simulator(simulator_url, control)
                await simulator.configure(**simulator_config)
                env = parley_env(
                    database_url=url, simulator_url=simulator_url, PARLEY_REDIS_URL=redis.url, PARLEY_TOOLS="calculator"
                )
                async with (
                    parley_serve(tmp_path, env) as a,
                    parley_serve(tmp_path, env) as b,
                    new_client(a.base_url) as http_a,
                    new_client(b.base_url) as http_b,
                ):
                    yield ReplicaPair(engine, simulator, a, b, http_a, http_b)


async def _events_from(http: httpx.AsyncClient, api: Api, session_id: str, turn_id: str, after: int) -> StreamRecord:
    return await follow(
        http,
        "GET",
        f"/v1/sessions/{session_id}/turns/{turn_id}/events",
        StreamRecord(),
        headers={**api.headers, "Last-Event-ID": str(after)},
    )


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "question",
    ["Tell me a long story.", "Use the calculator for (12+30)*7/3 please"],
    ids=["one-round", "after-a-tool-round"],
)
async def test_a_replica_takes_over_the_turn_of_a_replica_that_was_killed(tmp_path: Path, question: str) -> None:
    """Two replicas on one Postgres and one Redis. Replica A runs a turn and is SIGKILLed mid-answer (in the
    second case after its calculator round, while the model answers). Within the lease replica B takes the turn
    over: a browser that was reading it through B hears every event exactly once and in order, the browser that
    was reading it through A re-attaches to B with its last id and hears the rest, and the stored turn, ledger and
    upstream are those of an undisturbed turn (the tool ran once, no upstream response was made twice)."""
    async with replica_pair(tmp_path, tokens_per_second=25, first_token_delay_ms=0, output_tokens=150) as pair:
        engine, simulator, a, b = pair.engine, pair.simulator, pair.a, pair.b
        http_a, http_b = pair.http_a, pair.http_b
        api = await Api.with_new_user(http_a)
        session_id = await api.new_session()
        creates = await simulator.response_creates()
        # Enough deltas that the turn is in its answer (after the tool round, when there is one).
        record, task = api.start_stream(session_id, question, wanted_deltas=8)
        try:
            await until_progressed([record])
            watcher = asyncio.create_task(_events_from(http_b, Api(http_b, api.key), session_id, record.turn_id, 0))
            await asyncio.sleep(0.3)
            a.process.kill()
            assert await a.wait_exit(10) is not None
            await asyncio.wait_for(task, 10)
        finally:
            await cancel_all([task])
        killed_at = time.monotonic()
        seen = record.ids[-1]
        assert not record.terminals, "the turn ended before its process was killed"
        resumed = await _events_from(http_b, Api(http_b, api.key), session_id, record.turn_id, seen)
        watched = await asyncio.wait_for(watcher, 30)
        row = await poll_row(engine, record.turn_id, lambda r: r.status not in IN_FLIGHT, timeout=20)

        assert row.status == "completed", (row.status, row.error, b.output[-3000:])
        assert "turn.taken_over" in b.output
        assert time.monotonic() - killed_at < 20
        # The browser that read through B all along: every event once, in order, to the end.
        assert watched.ids == list(range(1, len(watched.ids) + 1)), "a gap or a repeat"
        assert [e.name for e in watched.terminals] == ["turn.completed"]
        assert watched.text == row.output_text
        # The browser that read through A, re-attached to B.
        assert resumed.ids == list(range(seen + 1, watched.ids[-1] + 1))
        assert record.text + resumed.text == row.output_text
        assert [(e.id, e.name) for e in record.events] == [(e.id, e.name) for e in watched.events[:seen]]

        rounds = 2 if "calculator" in question else 1
        assert len(row.response_ids) == rounds
        assert await simulator.response_creates() == creates + rounds
        assert watched.names.count("turn.tool_call.started") == rounds - 1
        assert watched.names.count("turn.tool_call.completed") == rounds - 1
        ledger = await usage_rows(engine, [row.id])
        assert sorted(u.response_id for u in ledger) == sorted(row.response_ids)
        last = await simulator.retrieve(row.response_ids[-1])
        assert last["status"] == "completed"
        assert next(u for u in ledger if u.response_id == last["id"]).output_tokens == last["usage"]["output_tokens"]
        assert row.output_text.endswith(
            "".join(p["text"] for item in last["output"] if item["type"] == "message" for p in item["content"])
        )
        # The session takes its next message at once, on either replica.
        after = await Api(http_b, api.key).send_and_wait(session_id, "Are you back?")
        assert after.status_code == 200, after.text
        assert after.json()["status"] == "completed"


@pytest.mark.timeout(90)
async def test_on_the_embedded_default_a_killed_turn_ends_interrupted(tmp_path: Path) -> None:
    """On the embedded default the simulator lives inside Parley and its running response dies with it: the
    restarted process cannot take the turn over, so it ends `failed` / `interrupted` within the lease, and the
    reader re-attaching hears that terminal event."""
    async with database("sqlite", tmp_path) as url, engine_for(url) as engine:
        env = parley_env(database_url=url, simulator_url="unused", PARLEY_SIMULATOR_SPEED="0.5")
        del env["OPENAI_API_KEY"], env["OPENAI_BASE_URL"]
        async with parley_serve(tmp_path, env) as parley, new_client(parley.base_url) as http:
            api = await Api.with_new_user(http)
            session_id = await api.new_session()
            record, task = api.start_stream(session_id, "Tell me a long story.", wanted_deltas=3)
            await kill_once_progressed(parley, record, task)
        seen = record.ids[-1]
        assert not record.terminals

        async with parley_serve(tmp_path, env) as parley, new_client(parley.base_url) as http:
            restarted = time.monotonic()
            resumed = await _events_from(http, api, session_id, record.turn_id, seen)
            row = await poll_row(engine, record.turn_id, lambda r: r.status not in IN_FLIGHT, timeout=15)
            assert time.monotonic() - restarted < 10
            assert row.status == "failed", (row.status, row.error, parley.output[-3000:])
            assert row.error["code"] == "interrupted"
            assert "turn.taken_over" not in parley.output
            assert [e.name for e in resumed.events] == ["turn.failed"]
            assert resumed.events[0].id > seen
            api.http = http
            after = await api.send_and_wait(session_id, "Are you back?")
            assert after.status_code == 200, after.text
            assert after.json()["status"] == "completed"


@pytest.mark.timeout(120)
async def test_a_replica_taking_over_between_rounds_does_not_run_a_finished_tool_again(tmp_path: Path) -> None:
    """Replica A ran the calculator and stored its output, and is killed while it waits to send the next round
    (the upstream asked it to retry in 4 s). Replica B takes the turn over: it sends the stored output without
    running the tool again, and the turn completes with both rounds in its ledger."""
    async with replica_pair(tmp_path, **FAST) as pair:
        engine, simulator, a, b = pair.engine, pair.simulator, pair.a, pair.b
        http_a, http_b = pair.http_a, pair.http_b
        api = await Api.with_new_user(http_a)
        session_id = await api.new_session()
        # The first round as usual (a stall that never comes); the second one is told to come back later.
        await simulator.next_faults(
            {"kind": "stall", "after_events": 100_000, "seconds": 0},
            {"kind": "http_error", "status": 503, "retry_after": 4},
        )
        record, task = api.start_stream(session_id, "Use the calculator for (12+30)*7/3 please")
        try:
            deadline = time.monotonic() + 15
            while "turn.tool_call.completed" not in record.names:
                assert time.monotonic() < deadline, record.names
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)
            a.process.kill()
            assert await a.wait_exit(10) is not None
            await asyncio.wait_for(task, 10)
        finally:
            await cancel_all([task])
        assert not record.terminals
        watched = await _events_from(http_b, Api(http_b, api.key), session_id, record.turn_id, 0)
        row = await poll_row(engine, record.turn_id, lambda r: r.status not in IN_FLIGHT, timeout=20)

        assert row.status == "completed", (row.status, row.error, b.output[-3000:])
        assert "turn.taken_over" in b.output
        assert watched.ids == list(range(1, len(watched.ids) + 1))
        assert watched.names.count("turn.tool_call.started") == 1
        assert watched.names.count("turn.tool_call.completed") == 1
        output = next(e for e in watched.events if e.name == "turn.tool_call.completed").data["output"]
        assert json.loads(output)["result"] == 98.0
        assert len(row.response_ids) == 2
        ledger = await usage_rows(engine, [row.id])
        assert sorted(u.response_id for u in ledger) == sorted(row.response_ids)
        assert watched.text == row.output_text
