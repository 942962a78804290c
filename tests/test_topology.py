"""docker-compose.yml's topology as processes on loopback: deploy/nginx.conf in front of two `parley serve`
replicas, which share a Postgres database (migrated first by `parley migrate`), a redis-server, the secret key
and one standalone `parley simulator` as their upstream.

What a user of the stack would notice: an answer that arrives all at once instead of as it is written,
stream URLs that point past the proxy, control routes reachable from outside, one replica doing all the
work, a body limit that disagrees with Parley's, a resumed stream with gaps on the other replica, a service
that stops answering while one replica stops, and errors that are not Parley's when none is left. nginx and
redis-server are Debian's: without them this module is skipped (and fails under CI=true).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ADMIN_TOKEN, ApiUser, create_api_user
from tests.databases import postgres_database
from tests.servers import free_port
from tests.test_container import nginx_command, render_nginx_conf, required_tool
from tests.turns.helpers import (
    Event,
    Simulator,
    Stream,
    attach,
    collect,
    new_session,
    open_stream,
    send,
    sse_events,
)

PARLEY = str(Path(sys.executable).parent / "parley")
SECRET_KEY = "topology-secret-" + uuid.uuid4().hex
GRACE_S = 2
DELTA = "response.output_text.delta"
TERMINAL_EVENTS = {"turn.completed", "turn.incomplete", "turn.failed", "turn.cancelled", "turn.requires_action"}
# 120 tokens at 20 a second: an answer written over about six seconds.
PACED = {"tokens_per_second": 20, "first_token_delay_ms": 0, "output_tokens": 120}
STALL_S = 3.0
INSTANT = {"tokens_per_second": 0, "first_token_delay_ms": 0, "output_tokens": None}


# --- the processes ------------------------------------------------------------------------------------


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=GRACE_S + 15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)


@dataclass
class Replica:
    process: Process
    base_url: str

    def access_log(self) -> list[dict[str, Any]]:
        """uvicorn's access lines (JSON, as in compose): client, method, path (with its query), status."""
        lines = []
        for line in self.process.output.splitlines():
            try:
                record = json.loads(line) if line.startswith("{") else {}
            except json.JSONDecodeError:  # the line being written as this reads
                continue
            if "path" in record and "method" in record:
                lines.append(record)
        return lines


@dataclass
class Topology:
    proxy_url: str
    replicas: list[Replica]
    simulator_url: str
    nginx: Process


def start(name: str, command: list[str], workdir: Path, env: dict[str, str] | None = None) -> Process:
    """Output to a file, not a pipe: a pipe nobody reads fills up and blocks the process."""
    log_path = workdir / f"{name}.log"
    with log_path.open("wb") as log:
        popen = subprocess.Popen(
            command, cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
        )
    return Process(name, popen, log_path)


async def until(process: Process, ready: Callable[[], bool], *, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if process.popen.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{process.name} did not start:\n{process.output[-3000:]}")
        await asyncio.sleep(0.05)


def answers(url: str, status: int = 200) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return httpx.get(url, timeout=1).status_code == status
        except httpx.TransportError:
            return False

    return check


def redis_answers(port: int) -> Callable[[], bool]:
    def check() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    return check


def replica_env(database_url: str, redis_url: str, simulator_url: str) -> dict[str, str]:
    """The replicas' environment in docker-compose.yml, at loopback addresses."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PARLEY_", "OPENAI_"))}
    env.update(
        PARLEY_DATABASE_URL=database_url,
        PARLEY_LOG_FORMAT="json",
        PARLEY_ADMIN_TOKEN=ADMIN_TOKEN,
        PARLEY_SECRET_KEY=SECRET_KEY,
        PARLEY_REDIS_URL=redis_url,
        PARLEY_SHUTDOWN_GRACE_S=str(GRACE_S),
        FORWARDED_ALLOW_IPS="*",
        OPENAI_API_KEY="sk-test",
        OPENAI_BASE_URL=f"{simulator_url}/v1",
        # The test sends more turns than a user may per minute; the limits have tests of their own.
        PARLEY_RATE_LIMIT_TURNS_PER_MINUTE="0",
        PARLEY_RATE_LIMIT_CONCURRENT_TURNS="0",
    )
    return env


@pytest.fixture(scope="module")
async def topology(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Topology]:
    nginx = required_tool("nginx")
    redis_server = required_tool("redis-server")
    workdir = tmp_path_factory.mktemp("topology")
    processes: list[Process] = []
    async with postgres_database(migrate=False) as database_url:
        try:
            redis_port = free_port()
            redis = start(
                "redis",
                [redis_server, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                workdir,
            )
            processes.append(redis)
            await until(redis, redis_answers(redis_port))

            simulator_url = f"http://127.0.0.1:{free_port()}"
            simulator = start("simulator", [PARLEY, "simulator", "--port", simulator_url.rsplit(":", 1)[1]], workdir)
            processes.append(simulator)
            await until(simulator, answers(f"{simulator_url}/_control/requests"))

            env = replica_env(database_url, f"redis://127.0.0.1:{redis_port}/0", simulator_url)
            # compose's one-shot `migrate`, before any replica starts.
            migrated = subprocess.run([PARLEY, "migrate"], cwd=workdir, env=env, capture_output=True, text=True)
            assert migrated.returncode == 0, migrated.stderr

            replicas = []
            for index in (1, 2):
                # Each in a directory of its own, as each container has its own /app/var (the spool).
                home = workdir / f"parley-{index}"
                home.mkdir()
                port = free_port()
                process = start(f"parley-{index}", [PARLEY, "serve", "--port", str(port)], home, env)
                processes.append(process)
                replicas.append(Replica(process, f"http://127.0.0.1:{port}"))
            for replica in replicas:
                await until(replica.process, answers(f"{replica.base_url}/readyz"))

            proxy_port = free_port()
            prefix = workdir / "nginx"
            prefix.mkdir()
            config = prefix / "nginx.conf"
            config.write_text(
                render_nginx_conf(
                    replicas=[r.base_url.removeprefix("http://") for r in replicas],
                    listen=f"127.0.0.1:{proxy_port}",
                    prefix=prefix,
                )
            )
            proxy = start("nginx", nginx_command(nginx, config, prefix), workdir)
            processes.append(proxy)
            proxy_url = f"http://127.0.0.1:{proxy_port}"
            await until(proxy, answers(f"{proxy_url}/healthz"))

            yield Topology(proxy_url=proxy_url, replicas=replicas, simulator_url=simulator_url, nginx=proxy)
        finally:
            for process in reversed(processes):
                process.stop()


@pytest.fixture
async def proxy(topology: Topology) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=topology.proxy_url, timeout=30) as http:
        yield http


@pytest.fixture
async def simulator(topology: Topology) -> AsyncIterator[Simulator]:
    async with httpx.AsyncClient(timeout=10) as http:
        sim = Simulator(http, topology.simulator_url)
        await sim.configure(**INSTANT)
        yield sim
        await sim.configure(**INSTANT)


async def access_lines(topology: Topology, marker: str, *, expected: int) -> list[list[dict[str, Any]]]:
    """Per replica, its access lines whose path contains `marker`, once `expected` of them are written (a line
    is written just after its response starts)."""
    deadline = time.monotonic() + 10
    while True:
        lines = [[r for r in replica.access_log() if marker in r["path"]] for replica in topology.replicas]
        if sum(map(len, lines)) >= expected or time.monotonic() > deadline:
            return lines
        await asyncio.sleep(0.05)


# --- the tests (in this order: the last two stop the replicas) ------------------------------------------


async def test_an_answer_streams_through_the_proxy_as_it_is_written(
    topology: Topology, proxy: httpx.AsyncClient, simulator: Simulator
) -> None:
    user = await create_api_user(proxy)
    session_id = await new_session(proxy, user, title="topology")
    # The upstream writes the start of the answer, then nothing for STALL_S. A proxy that held events back
    # (buffering them, or compressing) would still hold the first ones when the rest arrived; a paced answer
    # does not show it, as nginx's buffers fill and flush several times during one.
    await simulator.configure(**(INSTANT | {"output_tokens": 60}))
    await simulator.faults({"kind": "stall", "after_events": 10, "seconds": STALL_S})
    arrivals: list[tuple[float, Event]] = []
    async with open_stream(
        proxy,
        "POST",
        f"/v1/sessions/{session_id}/messages",
        json={"input": "Tell me something."},
        # A client that would take gzip (nothing may hold events back to compress them), and claims a scheme
        # of its own (the proxy says which it used).
        headers=user.headers | {"Accept-Encoding": "gzip", "X-Forwarded-Proto": "https"},
    ) as (stream, source):
        assert stream.status == 200, stream.error
        assert stream.headers["content-type"].startswith("text/event-stream")
        assert "content-encoding" not in stream.headers
        async for sse in sse_events(source):
            arrivals.append((time.monotonic(), Event.of(sse)))
    events = [event for _, event in arrivals]
    assert [e.id for e in events] == list(range(1, len(events) + 1))
    assert events[-1].name == "turn.completed", [e.name for e in events[-3:]]
    first_delta = next(at for at, event in arrivals if event.name == DELTA)
    assert arrivals[-1][0] - first_delta > STALL_S * 2 / 3, "the first delta arrived only with the rest"

    # The stream URL names the proxy (Host and scheme forwarded), and its token verifies on either replica.
    stream_url = events[0].data["turn"]["stream_url"]
    assert stream_url.startswith(f"{topology.proxy_url}/v1/sessions/{session_id}/turns/"), stream_url
    marker = uuid.uuid4().hex
    for _ in topology.replicas:
        replay = await proxy.get(f"{stream_url}&probe={marker}")
        assert replay.status_code == 200, replay.text
        assert "event: turn.completed" in replay.text
    assert all(await access_lines(topology, marker, expected=len(topology.replicas)))


async def test_requests_are_spread_over_both_replicas(topology: Topology, proxy: httpx.AsyncClient) -> None:
    marker = uuid.uuid4().hex
    for i in range(8):
        # A client's own X-Forwarded-For is replaced by the address the proxy saw.
        response = await proxy.get(f"/healthz?probe={marker}-{i}", headers={"X-Forwarded-For": "203.0.113.9"})
        assert response.status_code == 200
    per_replica = await access_lines(topology, marker, expected=8)
    assert [len(lines) >= 2 for lines in per_replica] == [True, True], [len(lines) for lines in per_replica]
    clients = {line["client"].rsplit(":", 1)[0] for lines in per_replica for line in lines}
    assert clients == {"127.0.0.1"}


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/simulator/_control/config"),
        ("POST", "/simulator/_control/next"),
        ("GET", "/simulator/_control/requests"),
        ("POST", "/simulator/_control/reset"),
        ("GET", "/metrics"),
    ],
)
async def test_control_routes_and_metrics_are_not_published(
    topology: Topology, proxy: httpx.AsyncClient, method: str, path: str
) -> None:
    marker = uuid.uuid4().hex
    response = await proxy.request(
        method,
        f"{path}?probe={marker}",
        json={"faults": []} if method == "POST" else None,
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    )
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    # Answered by the proxy: no replica ever saw it (while every replica serves /metrics itself).
    await proxy.get(f"/healthz?probe={marker}")
    assert sum(map(len, await access_lines(topology, marker, expected=1))) == 1
    assert (await proxy.get(f"{topology.replicas[-1].base_url}/metrics")).status_code == 200


async def test_the_body_limit_is_parleys(topology: Topology, proxy: httpx.AsyncClient) -> None:
    limit = 1_048_576  # PARLEY_MAX_BODY_BYTES
    headers = {"Content-Type": "application/json"}
    # Valid JSON of exactly so many bytes: an empty object and spaces.
    refused = await proxy.post("/v1/sessions", content=b"{}" + b" " * (limit - 1), headers=headers)
    assert refused.status_code == 413
    assert refused.json()["error"]["code"] == "payload_too_large"
    # At the limit it reaches Parley, which asks who is calling.
    passed = await proxy.post("/v1/sessions", content=b"{}" + b" " * (limit - 2), headers=headers)
    assert passed.status_code == 401, passed.text


async def test_a_turn_resumes_on_the_other_replica_with_every_event_once(
    topology: Topology, simulator: Simulator
) -> None:
    first, second = topology.replicas
    async with (
        httpx.AsyncClient(base_url=first.base_url, timeout=30) as a,
        httpx.AsyncClient(base_url=second.base_url, timeout=30) as b,
    ):
        user: ApiUser = await create_api_user(a)
        session_id = await new_session(a, user)
        await simulator.configure(**PACED)
        head = await send(a, user, session_id, stop_after=5)
        assert head.status == 200, head.error
        turn_id = head.events[0].data["turn"]["id"]
        rest = await attach(b, user, session_id, turn_id, last_event_id=head.events[-1].id)
    whole = Stream(status=200, headers=httpx.Headers(), events=head.events + rest.events)
    assert whole.ids == list(range(1, len(whole.events) + 1)), whole.ids
    assert [name for name in whole.names if name in TERMINAL_EVENTS] == ["turn.completed"]
    assert whole.terminal.name == "turn.completed"
    assert DELTA in rest.names, "the other replica sent no delta of the running turn"
    assert whole.text == whole.terminal.data["turn"]["output_text"]


async def test_the_service_answers_while_a_replica_stops(
    topology: Topology, proxy: httpx.AsyncClient, simulator: Simulator
) -> None:
    user = await create_api_user(proxy)
    session_id, busy_session = await new_session(proxy, user), await new_session(proxy, user)
    stopping = topology.replicas[0].process
    await simulator.configure(**PACED)
    async with (
        httpx.AsyncClient(base_url=topology.replicas[0].base_url, timeout=30) as direct,
        open_stream(
            direct, "POST", f"/v1/sessions/{busy_session}/messages", json={"input": "Hi."}, headers=user.headers
        ) as (stream, source),
    ):
        await collect(source, stream, stop_after=3)
        # Told to stop with a turn running: it drains for PARLEY_SHUTDOWN_GRACE_S, taking no new connection.
        stopping.popen.send_signal(signal.SIGTERM)
        statuses = [(await proxy.get("/v1/sessions", headers=user.headers)).status_code for _ in range(6)]
    deadline = time.monotonic() + GRACE_S + 15
    while stopping.popen.poll() is None and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert stopping.popen.poll() == 0, stopping.output[-2000:]

    await simulator.configure(**INSTANT)
    statuses += [(await proxy.get("/v1/sessions", headers=user.headers)).status_code for _ in range(6)]
    answer = await send(proxy, user, session_id)
    assert statuses == [200] * 12
    assert answer.status == 200, answer.error
    assert answer.terminal.name == "turn.completed"


async def test_with_no_replica_left_the_proxy_says_so_in_parleys_words(
    topology: Topology, proxy: httpx.AsyncClient
) -> None:
    for replica in topology.replicas:
        replica.process.stop()
    response = await proxy.get("/v1/sessions")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "2"
    assert response.json()["error"]["type"] == "service_unavailable"
