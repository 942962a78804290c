"""The harness: start the simulator and each peer on loopback, run every scenario against each in turn,
write raw JSON, a Markdown table and plots. See docs/benchmarks.md.

Cores: the server under test (naive relay, LiteLLM or Parley) runs alone on the last core; the simulator,
the load generator and this process share the first. Postgres is a system service and is not pinned, and so is
Redis (Parley's variant with its event log on Redis). Parley's replicas row pins each replica to a core of its
own where the machine has enough, and says which share one.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from app.settings import Settings
from bench import litellm_peer, machine, procs, profile, redis_db, report
from bench.plan import Plan
from bench.stats import added, linear_fit

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = REPO / ".venv" / "bin"
PYTHON = sys.executable
POSTGRES_ADMIN_DSN = os.environ.get("PARLEY_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
MODEL = "gpt-4.1-mini"
INSTRUCTIONS = "You are a helpful assistant."
PROMPT = "Tell me about benchmarks."
ADMIN_TOKEN = "bench-admin-" + uuid.uuid4().hex
# Parley's default limit of turns in flight per user: production-like concurrency spreads over users.
SESSIONS_PER_USER = 4
# More CPU than this used by other work during a run (in cores) marks the run as disturbed.
DISTURBED_CORES = 0.3


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def responses_request(api_key: str) -> dict[str, Any]:
    body = {"model": MODEL, "input": PROMPT, "instructions": INSTRUCTIONS, "stream": True}
    return {"path": "/v1/responses", "body": json.dumps(body), "headers": {"Authorization": f"Bearer {api_key}"}}


@dataclass
class Target:
    """A peer as the load generator sees it."""

    name: str
    port: int
    server: procs.Server | None
    requests: Callable[[int], list[dict[str, Any]]]
    notes: list[str] = field(default_factory=list)
    # More replicas of the same server beside `server`: the load generator spreads its slots over all their
    # ports, and the CPU measured is theirs together.
    extra: list[procs.Server] = field(default_factory=list)
    # Its event log is on the machine's Redis: Redis's CPU is the run's own, not other work.
    uses_redis: bool = False
    # Which configuration of the peer this is (Parley's variants), in the names of the load specs.
    tag: str = ""

    @property
    def servers(self) -> list[procs.Server]:
        return [self.server, *self.extra] if self.server is not None else []


class SessionPool:
    """Parley's sessions, handed out so that concurrent slots never share one (one turn in flight each)
    and the turns spread over all of them (the simulator's cost grows with a conversation's length)."""

    def __init__(self, sessions: list[tuple[str, str]]) -> None:
        self.sessions = sessions
        self.offset = 0

    def exclude(self, session_ids: set[str]) -> None:
        self.sessions = [entry for entry in self.sessions if entry[0] not in session_ids]
        self.offset = 0

    def requests(self, concurrency: int) -> list[dict[str, Any]]:
        size = len(self.sessions)
        count = max(1, size // concurrency) * concurrency if size >= concurrency else size
        chosen = [self.sessions[(self.offset + i) % size] for i in range(count)]
        self.offset = (self.offset + count) % size
        body = json.dumps({"input": PROMPT, "stream": True})
        return [
            {"path": f"/v1/sessions/{sid}/messages", "body": body, "headers": {"Authorization": f"Bearer {key}"}}
            for sid, key in chosen
        ]


def _delay_p99(result: dict[str, Any]) -> float:
    value = (result.get("delay_ms") or {}).get("p99")
    return float(value) if value is not None else math.inf


async def _admin(query: str) -> None:
    connection = await asyncpg.connect(POSTGRES_ADMIN_DSN)
    try:
        await connection.execute(query)
    finally:
        await connection.close()


async def _fetch(database: str, queries: dict[str, str]) -> dict[str, Any]:
    dsn = POSTGRES_ADMIN_DSN.rsplit("/", 1)[0] + f"/{database}"
    for attempt in range(10):
        try:
            connection = await asyncpg.connect(dsn)
            break
        except asyncpg.TooManyConnectionsError:
            # Parley's pools and other work (a test suite) can take every connection for a moment.
            if attempt == 9:
                raise
            await asyncio.sleep(0.5)
    try:
        return {name: [tuple(row) for row in await connection.fetch(query)] for name, query in queries.items()}
    finally:
        await connection.close()


async def _commit_probe(database: str, count: int = 50) -> dict[str, float]:
    """How long one durable commit takes on this machine's Postgres (every Parley turn makes three)."""
    dsn = POSTGRES_ADMIN_DSN.rsplit("/", 1)[0] + f"/{database}"
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute("CREATE TABLE bench_commit_probe (x int)")
        timings = []
        for number in range(count):
            started = time.perf_counter()
            await connection.execute("INSERT INTO bench_commit_probe VALUES ($1)", number)
            timings.append((time.perf_counter() - started) * 1000)
        round_trips = []
        for _ in range(count):
            started = time.perf_counter()
            await connection.fetchval("SELECT 1")
            round_trips.append((time.perf_counter() - started) * 1000)
        await connection.execute("DROP TABLE bench_commit_probe")
        settings = {name: await connection.fetchval(f"SHOW {name}") for name in ("synchronous_commit", "fsync")}
    finally:
        await connection.close()
    return {
        "commit_ms_p50": statistics.median(timings),
        "select_1_ms_p50": statistics.median(round_trips),
        **settings,
    }


async def _connection_headroom(database: str) -> int:
    """Connections Postgres would still accept (max_connections less those open and those reserved), Parley's
    own database's not counted: called while no Parley runs, those are a stopped process's, on their way out."""
    connection = await asyncpg.connect(POSTGRES_ADMIN_DSN)
    try:
        limit = int(await connection.fetchval("SHOW max_connections"))
        reserved = int(await connection.fetchval("SHOW superuser_reserved_connections"))
        used = int(
            await connection.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND datname IS DISTINCT FROM $1",
                database,
            )
        )
    finally:
        await connection.close()
    return limit - reserved - used


# Parley's own default (PARLEY_DATABASE_POOL_SIZE), which one process of the main rows runs with.
PARLEY_POOL_SIZE: int = Settings.model_fields["database_pool_size"].default
# Connections left for the harness's own queries and anything else on the machine.
POSTGRES_SPARE = 10


def replica_pool_size(headroom: int, replicas: int, default: int = PARLEY_POOL_SIZE) -> int:
    """Each replica's database pool: Parley's default, unless the replicas' pools together would not fit
    in what Postgres has left (e.g. 100 connections, the default, and two replicas of 40 beside other work)."""
    return max(1, min(default, (headroom - POSTGRES_SPARE) // replicas))


def postgres_version() -> str:
    async def fetch() -> str:
        connection = await asyncpg.connect(POSTGRES_ADMIN_DSN)
        try:
            return str(await connection.fetchval("SHOW server_version"))
        finally:
            await connection.close()

    try:
        return asyncio.run(fetch())
    except (OSError, asyncpg.PostgresError) as error:
        return f"unreachable: {error}"


class Harness:
    def __init__(self, plan: Plan, out_dir: Path) -> None:
        self.plan = plan
        self.out = out_dir
        self.logs = out_dir / "logs"
        self.specs = out_dir / "specs"
        self.profiles = out_dir / "profiles"
        for directory in (self.logs, self.specs, self.profiles):
            directory.mkdir(parents=True, exist_ok=True)
        cores = sorted(os.sched_getaffinity(0))
        self.server_cpus = {cores[-1]}
        self.driver_cpus = {cores[0]}
        os.sched_setaffinity(0, self.driver_cpus)
        self.http = httpx.Client(timeout=60)
        self.servers: list[procs.Server] = []
        self.databases: list[str] = []
        self.sim: procs.Server | None = None
        self.one_user_pool: SessionPool | None = None
        self.loadgen_process: subprocess.Popen[bytes] | None = None
        self.parley_database: str | None = None
        # How Parley was started (argv, environment, port), for the restart with limits counting.
        self.parley_launch: tuple[list[str], dict[str, str], int] | None = None
        self.redis: redis_db.Claimed | None = None
        self.session_pools: list[SessionPool] = []
        self.stuck_sessions: set[str] = set()
        self.runs = 0
        self.results: dict[str, Any] = {
            "mode": plan.name,
            "plan": plan.as_json(),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": machine.machine(),
            "versions": machine.versions(REPO),
            "postgres": postgres_version(),
            "pinning": {
                "server_under_test_cpus": sorted(self.server_cpus),
                "simulator_cpus": sorted(self.driver_cpus),
                "loadgen_cpus": sorted(self.driver_cpus),
                "harness_cpus": sorted(self.driver_cpus),
                "postgres": "not pinned (a system service, not started by the harness)",
                "redis": "not pinned (a system service, not started by the harness)",
                "replicas_cpus": [sorted(cpus) for cpus in self.replica_cpus()],
                "nice": procs.PRIORITY["nice"],
            },
            "peers": {},
            "notes": [],
        }

    # --- processes ---------------------------------------------------------------------------------

    def start(
        self, name: str, argv: list[str], *, port: int, cpus: set[int], env: dict[str, str] | None = None
    ) -> procs.Server:
        server = procs.start(name, argv, port=port, cpus=cpus, log_dir=self.logs, env=env, cwd=REPO)
        self.servers.append(server)
        return server

    def stop(self, server: procs.Server | None) -> None:
        if server is not None:
            server.stop()
            with contextlib.suppress(ValueError):
                self.servers.remove(server)

    def close(self) -> None:
        if self.loadgen_process is not None and self.loadgen_process.poll() is None:
            self.loadgen_process.kill()
            self.loadgen_process.wait()
        for server in list(self.servers):
            with contextlib.suppress(Exception):
                server.stop()
        self.servers.clear()
        for database in self.databases:
            with contextlib.suppress(Exception):
                asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        if self.redis is not None:
            try:
                keys = redis_db.release(self.redis)
                log(f"flushed Redis database {self.redis.index} ({keys} keys)")
                # Parley's turn streams (and the claim): evidence that the Redis rows did write to Redis.
                self.results.setdefault("redis", {})["keys_flushed"] = keys
            except Exception as error:
                log(f"could not flush Redis database {self.redis.index}: {error}")
            self.redis = None
        self.http.close()

    def start_simulator(self) -> None:
        port = procs.free_port()
        self.sim = self.start(
            "simulator", [str(VENV_BIN / "parley"), "simulator", "--port", str(port)], port=port, cpus=self.driver_cpus
        )
        procs.wait_healthy(self.sim, "/_control/config")

    @property
    def sim_url(self) -> str:
        assert self.sim is not None
        return self.sim.base_url

    def configure(self, *, tps: float = 0.0, delay_ms: float = 0.0, tokens: int) -> None:
        body = {"tokens_per_second": tps, "first_token_delay_ms": delay_ms, "output_tokens": tokens}
        response = self.http.post(f"{self.sim_url}/_control/config", json=body)
        response.raise_for_status()

    # --- the load generator ------------------------------------------------------------------------

    def load(
        self,
        target: Target,
        label: str,
        *,
        concurrency: int,
        during: Callable[[float], None] | None = None,
        **spec: Any,
    ) -> dict[str, Any]:
        """One load-generator run; repeated once (after waiting for quiet) if other work on the machine took
        more than DISTURBED_CORES meanwhile. Every attempt's other load is kept in the result."""
        plan = self.plan
        attempts: list[float] = []
        while True:
            quiet = self.wait_for_quiet(plan.quiet_wait_run_s, sample_s=1.0) if plan.quiet_wait_run_s > 0 else None
            result = self._load_once(target, label, concurrency=concurrency, during=during, **spec)
            if target.name == "parley" and self.parley_database:
                # Turns outlive their requests: a run the load generator cut short leaves turns running, and
                # their sessions would answer the next run with 409.
                result["settle"] = self.settle(self.parley_database)
            foreign = result["cpu"]["foreign_cores"]
            attempts.append(foreign)
            if quiet is not None:
                result["cpu"]["foreign_cores_before"] = quiet["busy_cores"]
            if foreign <= DISTURBED_CORES or len(attempts) > plan.disturbed_retries or during is not None:
                result["cpu"]["foreign_cores_attempts"] = attempts
                return result
            log(f"  {target.name}/{label}: {foreign:.2f} cores of other work meanwhile; running it again")

    def _load_once(
        self,
        target: Target,
        label: str,
        *,
        concurrency: int,
        during: Callable[[float], None] | None = None,
        **spec: Any,
    ) -> dict[str, Any]:
        self.runs += 1
        requests = target.requests(concurrency)
        payload = {"host": "127.0.0.1", "port": target.port, "requests": requests, "concurrency": concurrency, **spec}
        if target.extra:
            payload["ports"] = [server.port for server in target.servers]
        name = f"{target.name}-{target.tag}" if target.tag else target.name
        spec_path = self.specs / f"{self.runs:03d}-{name}-{label}.json"
        result_path = spec_path.with_suffix(".result.json")
        spec_path.write_text(json.dumps(payload))
        assert self.sim is not None
        server_pids = [pid for server in target.servers for pid in server.tree()]
        server_cores = set().union(*(server.cpus for server in target.servers)) if target.servers else self.server_cpus
        sim_pids = self.sim.tree()
        postgres = procs.ProcessGroupCpu("postgres")
        redis_cpu = procs.ProcessGroupCpu("redis-server") if target.uses_redis else None
        before = (procs.cpu_seconds(server_pids), procs.cpu_seconds(sim_pids))
        # Each replica's own, when there are several (its process tree as it was at the start).
        trees = [server.tree() for server in target.servers] if target.extra else []
        per_process_before = [procs.cpu_seconds(tree) for tree in trees]
        machine_before = procs.machine_jiffies()
        server_core_before = procs.core_jiffies(server_cores)
        harness_before = time.process_time()
        started = time.monotonic()
        process = subprocess.Popen(
            [PYTHON, "-m", "bench.loadgen", str(spec_path), str(result_path)],
            cwd=REPO,
            stderr=subprocess.PIPE,
            preexec_fn=procs.pin_to(self.driver_cpus),
        )
        self.loadgen_process = process
        while process.poll() is None:
            if during is not None:
                during(time.monotonic() - started)
            time.sleep(0.05)
        elapsed = time.monotonic() - started
        stderr = process.stderr.read().decode(errors="replace") if process.stderr else ""
        if process.returncode != 0:
            raise RuntimeError(f"loadgen failed ({process.returncode}): {stderr[-2000:]}")
        after = (procs.cpu_seconds(server_pids), procs.cpu_seconds(sim_pids))
        per_process = [procs.cpu_seconds(tree) - was for tree, was in zip(trees, per_process_before, strict=True)]
        machine_cores = procs.busy_cores(machine_before, procs.machine_jiffies())
        server_core = procs.busy_share(server_core_before, procs.core_jiffies(server_cores))
        postgres_s = postgres.elapsed()
        redis_s = redis_cpu.elapsed() if redis_cpu is not None else 0.0
        harness_s = time.process_time() - harness_before
        result: dict[str, Any] = json.loads(result_path.read_text())
        if target.extra:
            result["replica_ports"] = payload["ports"]
        server_s, sim_s = (a - b for a, b in zip(after, before, strict=True))
        ours = server_s + sim_s + postgres_s + redis_s + harness_s + result["loadgen_cpu_s"]
        result["cpu"] = {
            "wall_s": elapsed,
            "server_s": server_s if target.server is not None else None,
            "server_share": server_s / elapsed if target.server is not None else None,
            "simulator_s": sim_s,
            "simulator_share": sim_s / elapsed,
            "postgres_s": postgres_s,
            "redis_s": redis_s if redis_cpu is not None else None,
            "server_processes": len(target.servers),
            "server_s_by_process": per_process or None,
            # The core shared by the simulator and the load generator: near 1.0 means the rig, not the peer,
            # may be the limit.
            "driver_core_share": (sim_s + result["loadgen_cpu_s"]) / elapsed,
            # Everything on the server's core: the server, the kernel's work for its sockets (softirq, not
            # charged to any process) and whatever else ran there (Postgres's backends are not pinned). Near
            # 1.0, the server is short of CPU though its own share may read ~0.65.
            "server_core_busy": server_core,
            "machine_busy_cores": machine_cores,
            # Whatever else ran on the machine meanwhile (other users' test suites, the kernel): the numbers
            # of a run with much of it are not to be trusted.
            "foreign_cores": max(machine_cores - ours / elapsed, 0.0),
        }
        if result["events"] and target.server is not None:
            result["cpu"]["server_us_per_event"] = server_s / result["events"] * 1e6
        if result["errors"]:
            log(f"  {target.name}/{label}: errors {result['errors']} {result.get('error_bodies', [])[:1]}")
        return result

    def wait_for_quiet(
        self, max_wait_s: float, threshold_cores: float = DISTURBED_CORES, sample_s: float = 2.0
    ) -> dict[str, Any]:
        """Other work on the machine (another session's test suite) skews every number: wait, bounded, for
        it to stop, and record what there was."""
        started = time.monotonic()
        while True:
            before = procs.machine_jiffies()
            time.sleep(sample_s)
            load = procs.busy_cores(before, procs.machine_jiffies())
            waited = time.monotonic() - started
            if load < threshold_cores or waited >= max_wait_s:
                if load >= threshold_cores:
                    log(f"  the machine is still busy ({load:.2f} cores used by others); going on")
                return {"busy_cores": load, "waited_s": waited, "quiet": load < threshold_cores}
            if sample_s >= 2.0 or int(waited) % 10 == 0:
                log(f"  waiting for a quiet machine: {load:.2f} cores busy with other work")

    # --- peers ---------------------------------------------------------------------------------------

    def direct(self) -> Target:
        assert self.sim is not None
        request = responses_request("sk-bench-direct")
        return Target("direct", self.sim.port, None, lambda _n: [request], ["the client reads the simulator itself"])

    def naive(self) -> Target:
        port = procs.free_port()
        argv = [PYTHON, "-m", "bench.naive_relay", "--port", str(port), "--upstream", f"{self.sim_url}/v1"]
        server = self.start("naive", argv, port=port, cpus=self.server_cpus)
        procs.wait_healthy(server, "/healthz")
        request = responses_request("unused")
        return Target(
            "naive", port, server, lambda _n: [request], ["bench/naive_relay.py: SDK typed events → sse-starlette"]
        )

    def litellm(self) -> Target:
        install = litellm_peer.ensure_venv(self.logs)
        info: dict[str, Any] = {"install": install.note, "version": install.version, "install_s": install.seconds}
        self.results["litellm"] = info
        if not install.ok:
            raise PeerUnavailable(f"LiteLLM could not be installed: {install.note}")
        prisma_ok, prisma_note = litellm_peer.probe_prisma(install.venv, self.logs)
        database_url = None
        if prisma_ok:
            name = f"litellm_bench_{uuid.uuid4().hex[:10]}"
            asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
            self.databases.append(name)
            database_url = POSTGRES_ADMIN_DSN.rsplit("/", 1)[0] + f"/{name}"
        info["postgres_logging"] = bool(database_url)
        info["postgres_note"] = prisma_note if prisma_ok else f"ran without Postgres spend logging: {prisma_note}"
        config = self.out / "litellm.yaml"
        litellm_peer.write_config(config, self.sim_url, database_url)
        port = procs.free_port()
        argv = [
            str(install.venv / "bin" / "litellm"),
            "--config",
            str(config),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]
        server = self.start("litellm", argv, port=port, cpus=self.server_cpus, env=litellm_peer.environment())
        info["startup_s"] = procs.wait_healthy(server, "/health/liveliness", timeout=180)
        request = responses_request(litellm_peer.MASTER_KEY)
        notes = [f"LiteLLM {install.version}, proxy /v1/responses", info["postgres_note"]]
        return Target("litellm", port, server, lambda _n: [request], notes)

    def parley(self) -> tuple[Target, str]:
        database = f"parley_bench_{uuid.uuid4().hex[:10]}"
        asyncio.run(_admin(f'CREATE DATABASE "{database}"'))
        self.databases.append(database)
        self.results["postgres_probe"] = asyncio.run(_commit_probe(database))
        self.parley_database = database
        database_url = f"postgresql+asyncpg://{POSTGRES_ADMIN_DSN.split('://', 1)[1].rsplit('/', 1)[0]}/{database}"
        env = {
            "PARLEY_DATABASE_URL": database_url,
            "OPENAI_API_KEY": "sk-bench-parley",
            "OPENAI_BASE_URL": f"{self.sim_url}/v1",
            "PARLEY_ADMIN_TOKEN": ADMIN_TOKEN,
            "PARLEY_SECRET_KEY": uuid.uuid4().hex + uuid.uuid4().hex,
            "PARLEY_RATE_LIMIT_TURNS_PER_MINUTE": "0",
            "PARLEY_RATE_LIMIT_CONCURRENT_TURNS": "0",
            "PARLEY_DEFAULT_MODEL": MODEL,
            "PARLEY_DEFAULT_INSTRUCTIONS": INSTRUCTIONS,
            "PARLEY_SPOOL_DIR": str(self.out / "parley-spool"),
            "PARLEY_LOG_FORMAT": "json",
        }
        migrated = subprocess.run(
            [str(VENV_BIN / "parley"), "migrate"],
            env={**os.environ, **env},
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        if migrated.returncode != 0:
            raise PeerUnavailable(f"parley migrate failed: {migrated.stderr[-1000:]}")
        port = procs.free_port()
        argv = [str(VENV_BIN / "parley"), "serve", "--host", "127.0.0.1", "--port", str(port)]
        self.parley_launch = (argv, env, port)
        server = self.start("parley", argv, port=port, cpus=self.server_cpus, env=env)
        procs.wait_healthy(server, "/readyz", timeout=90)
        sessions = asyncio.run(self._parley_sessions(server.base_url, self.plan.sessions_needed))
        pool = SessionPool(sessions)
        self.one_user_pool = SessionPool(
            asyncio.run(self._one_user_sessions(server.base_url, self.plan.turns_concurrency))
        )
        self.session_pools = [pool, self.one_user_pool]
        # A fresh process for the measurements: creating thousands of sessions leaves freed memory behind that
        # open streams would reuse, hiding their cost.
        self.stop(server)
        server = self.start("parley", argv, port=port, cpus=self.server_cpus, env=env)
        procs.wait_healthy(server, "/readyz", timeout=90)
        notes = [
            f"Postgres database {database} (throw-away), `parley migrate`, `parley serve`",
            f"{len(sessions)} sessions, {SESSIONS_PER_USER} per user; rate limits off; logs JSON at INFO to a file",
        ]
        return Target("parley", port, server, pool.requests, notes), database

    async def _parley_sessions(self, base_url: str, count: int) -> list[tuple[str, str]]:
        """`count` sessions, SESSIONS_PER_USER to a user (Parley's default limit of turns in flight per user),
        as (session id, that user's API key)."""
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        semaphore = asyncio.Semaphore(16)
        async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:

            async def user_with_sessions(index: int, sessions: int) -> list[tuple[str, str]]:
                async with semaphore:
                    name = f"bench-{index}-{uuid.uuid4().hex[:6]}"
                    user = await client.post("/v1/admin/users", json={"name": name}, headers=admin)
                    user.raise_for_status()
                    key = await client.post(f"/v1/admin/users/{user.json()['id']}/keys", json={}, headers=admin)
                    key.raise_for_status()
                    api_key: str = key.json()["key"]
                    made = []
                    for number in range(sessions):
                        response = await client.post(
                            "/v1/sessions",
                            json={"title": f"bench {index}.{number}"},
                            headers={"Authorization": f"Bearer {api_key}"},
                        )
                        response.raise_for_status()
                        made.append((str(response.json()["id"]), api_key))
                    return made

            users = (count + SESSIONS_PER_USER - 1) // SESSIONS_PER_USER
            batches = await asyncio.gather(
                *(user_with_sessions(i, min(SESSIONS_PER_USER, count - i * SESSIONS_PER_USER)) for i in range(users))
            )
        # Interleaved, so that any run of consecutive slots spreads over as many users as possible.
        return [batch[i] for i in range(SESSIONS_PER_USER) for batch in batches if i < len(batch)]

    async def _one_user_sessions(self, base_url: str, count: int) -> list[tuple[str, str]]:
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
            user = await client.post(
                "/v1/admin/users", json={"name": f"bench-one-{uuid.uuid4().hex[:6]}"}, headers=admin
            )
            user.raise_for_status()
            key = await client.post(f"/v1/admin/users/{user.json()['id']}/keys", json={}, headers=admin)
            key.raise_for_status()
            api_key: str = key.json()["key"]
            made = []
            for number in range(count):
                response = await client.post(
                    "/v1/sessions", json={"title": f"one user {number}"}, headers={"Authorization": f"Bearer {api_key}"}
                )
                response.raise_for_status()
                made.append((str(response.json()["id"]), api_key))
        return made

    # --- scenarios -----------------------------------------------------------------------------------

    def warmup(self, target: Target) -> None:
        self.configure(tokens=20)
        self.load(target, "warmup", concurrency=4, streams_per_slot=5, timeout_s=60)

    def warm_every_connection(self, target: Target) -> None:
        """Turns on as many connections at once as the turns scenario, several each: a restarted Parley's
        database connections are new backends, which plan each statement afresh for its first five runs
        (and compile the limits function at its first), ~1 ms of Postgres CPU per turn more in the turns
        scenario than the same process measured again (b55d09b); the early rows' connections are long warm."""
        self.configure(tokens=20)
        self.load(target, "warmup-pool", concurrency=self.plan.turns_concurrency, streams_per_slot=8, timeout_s=120)

    def ttft_single(self, target: Target) -> dict[str, Any]:
        self.configure(tokens=self.plan.ttft_tokens)
        streams = self.plan.ttft_streams
        if target.name == "direct":
            return self.load(target, "ttft", concurrency=1, streams_per_slot=streams, timeout_s=120)
        # The floor again, just before: direct's own series ran minutes earlier, against a simulator that held
        # nothing yet, and this machine drifts by tens of percent in that time. Added TTFT is this peer's
        # series minus the one right before it.
        floor = self.load(self.direct(), "ttft-direct", concurrency=1, streams_per_slot=streams, timeout_s=120)
        result = self.load(target, "ttft", concurrency=1, streams_per_slot=streams, timeout_s=120)
        result["direct_just_before"] = {"ttft_ms": floor["ttft_ms"], "cpu": floor["cpu"]}
        return result

    def burst(self, target: Target, consumer: str = "sse") -> dict[str, Any]:
        plan = self.plan
        self.configure(tokens=plan.burst_tokens)
        return self.load(
            target,
            f"burst-{consumer}",
            concurrency=plan.burst_concurrency,
            stop_starting_after_s=plan.burst_s,
            measure_from_s=1.0,
            measure_until_s=plan.burst_s,
            timeout_s=plan.burst_s + 120,
            consumer=consumer,
        )

    def turns(self, target: Target, database: str | None) -> dict[str, Any]:
        plan = self.plan
        self.configure(tokens=plan.turns_tokens)
        before = self.rows(database) if database else None
        result = self.load(
            target,
            "turns",
            concurrency=plan.turns_concurrency,
            stop_starting_after_s=plan.turns_s,
            measure_from_s=0.0,
            measure_until_s=plan.turns_s,
            timeout_s=plan.turns_s + 60,
        )
        result["turns_per_s"] = result["streams_per_s"]
        if database and before is not None:
            time.sleep(0.5)  # the last turns' final writes land before their terminal events go out
            after = self.rows(database)
            result["rows_written"] = {name: after[name] - before[name] for name in after}
        return result

    def settle(self, database: str, stall_s: float = 20.0) -> dict[str, Any]:
        """Wait until Parley has no turn in flight. Turns that stop finishing (a final write that failed
        without being spooled leaves its turn `in_progress`) are reported, and their sessions, which would
        answer 409 from then on, are taken out of the session pools."""
        started = time.monotonic()
        query = {"open": "SELECT session_id FROM turns WHERE status IN ('queued', 'in_progress')"}
        last_count, last_change = -1, started
        while True:
            sessions = {str(row[0]) for row in asyncio.run(_fetch(database, query))["open"]} - self.stuck_sessions
            now = time.monotonic()
            if len(sessions) != last_count:
                last_count, last_change = len(sessions), now
            if not sessions:
                return {"waited_s": now - started, "stuck_turns": 0}
            if now - last_change > stall_s:
                log(f"  {len(sessions)} Parley turns stuck in flight; leaving their sessions out from now on")
                for pool in self.session_pools:
                    pool.exclude(sessions)
                self.stuck_sessions |= sessions
                return {"waited_s": now - started, "stuck_turns": len(sessions)}
            time.sleep(0.5)

    def rows(self, database: str) -> dict[str, int]:
        queries = {
            "turns_completed": "SELECT count(*) FROM turns WHERE status = 'completed'",
            "turns": "SELECT count(*) FROM turns",
            "messages": "SELECT count(*) FROM messages",
            "usage_records": "SELECT count(*) FROM usage_records",
            "sessions": "SELECT count(*) FROM sessions",
        }
        fetched = asyncio.run(_fetch(database, queries))
        return {name: int(rows[0][0]) for name, rows in fetched.items()}

    def sweep(self, target: Target) -> dict[str, Any]:
        plan = self.plan
        points = []
        for tokens in plan.sweep_tokens:
            self.configure(tokens=tokens)
            result = self.load(
                target,
                f"sweep-{tokens}",
                concurrency=plan.sweep_concurrency,
                stop_starting_after_s=plan.sweep_s,
                measure_from_s=0.0,
                measure_until_s=plan.sweep_s,
                timeout_s=plan.sweep_s + 120,
            )
            cpu = result["cpu"]
            server_s = cpu["server_s"] if cpu["server_s"] is not None else cpu["simulator_s"]
            points.append(
                {
                    "tokens": tokens,
                    "streams": result["ok"],
                    "events_per_stream": result["events_per_stream"].get("mean"),
                    "cpu_ms_per_stream": server_s * 1000 / result["ok"] if result["ok"] else None,
                    "cpu_share": server_s / cpu["wall_s"],
                    "events_per_s": result["events_per_s"],
                    "errors": result["errors"],
                    "measured": "server" if cpu["server_s"] is not None else "simulator",
                    "foreign_cores": cpu["foreign_cores"],
                }
            )
        return {"points": points}

    def paced(self, target: Target, streams: int) -> dict[str, Any]:
        plan = self.plan
        length, window = plan.paced_stream_s, plan.paced_window_s
        self.configure(tps=plan.paced_tps, tokens=round(length * plan.paced_tps))
        result = self.load(
            target,
            f"paced-{streams}",
            concurrency=streams,
            stagger_s=length,
            stop_starting_after_s=length + window,
            window=(length, length + window),
            measure_from_s=length,
            measure_until_s=length + window,
            tokens_per_second=plan.paced_tps,
            timeout_s=2 * length + window + 45,
        )
        result["streams_target"] = streams
        return result

    def memory(self, target: Target) -> dict[str, Any]:
        plan = self.plan
        assert target.server is not None
        server = target.server
        self.configure(tps=plan.memory_tps, tokens=plan.memory_tokens)
        baseline = []
        for _ in range(3):
            baseline.append(server.rss_kib())
            time.sleep(0.3)
        baseline_sockets = procs.socket_count(server.tree())
        stream_s = plan.memory_tokens / plan.memory_tps
        sample_times = [plan.memory_ramp_s + 1.0 + 0.5 * i for i in range(max(1, int(min(stream_s - 3, 4) / 0.5)))]
        samples: list[dict[str, float]] = []

        def during(elapsed: float) -> None:
            if sample_times and elapsed >= sample_times[0]:
                sample_times.pop(0)
                pids = server.tree()
                samples.append({"t": elapsed, "rss_kib": procs.rss_kib(pids), "sockets": procs.socket_count(pids)})

        result = self.load(
            target,
            "memory",
            concurrency=plan.memory_streams,
            stagger_s=plan.memory_ramp_s,
            streams_per_slot=1,
            timeout_s=plan.memory_ramp_s + stream_s + 90,
            during=during,
        )
        base = statistics.median(baseline)
        open_rss = statistics.median(s["rss_kib"] for s in samples) if samples else float("nan")
        result["memory"] = {
            "baseline_kib": base,
            "open_kib": open_rss,
            "samples": samples,
            "streams": plan.memory_streams,
            # Over the streams really opened: one refused with an error holds nothing.
            "kib_per_stream": (open_rss - base) / result["ok"] if result["ok"] else None,
            # Streams open while sampled, from the sockets they hold (two each); streams still waiting for a
            # database connection, or refused, hold no upstream socket.
            "baseline_sockets": baseline_sockets,
            "open_streams_by_sockets": (
                (statistics.median(s["sockets"] for s in samples) - baseline_sockets) / 2 if samples else None
            ),
            # The marginal cost: RSS against open streams over the samples (streams still opening while
            # sampled first reuse memory the process had freed, so the average above can flatter).
            "kib_per_stream_slope": linear_fit(
                [(sample["sockets"] - baseline_sockets) / 2 for sample in samples],
                [float(sample["rss_kib"]) for sample in samples],
            )[1]
            if len({sample["sockets"] for sample in samples}) >= 3
            else None,
        }
        return result

    # --- the run -------------------------------------------------------------------------------------

    def loadgen_ceiling(self) -> dict[str, Any]:
        """The load generator against a canned server (on the server core) that sends a recorded
        500-token simulator stream as fast as it can: the full parser and a trivial consumer."""
        self.configure(tokens=self.plan.burst_tokens)
        body = self.http.post(
            f"{self.sim_url}/v1/responses",
            json={"model": MODEL, "input": PROMPT, "instructions": INSTRUCTIONS, "stream": True},
            headers={"Authorization": "Bearer sk-bench"},
        ).content
        body_path = self.out / "canned-stream.sse"
        body_path.write_bytes(body)
        port = procs.free_port()
        canned = self.start(
            "canned",
            [PYTHON, "-m", "bench.canned", "--port", str(port), "--body", str(body_path), "--events-per-write", "1"],
            port=port,
            cpus=self.server_cpus,
        )
        try:
            time.sleep(1.0)
            target = Target("canned", port, canned, lambda _n: [responses_request("x")])
            results = {}
            for consumer in ("sse", "trivial"):
                results[consumer] = self.load(
                    target,
                    f"ceiling-{consumer}",
                    concurrency=self.plan.burst_concurrency,
                    stop_starting_after_s=self.plan.ceiling_s,
                    measure_from_s=0.5,
                    measure_until_s=self.plan.ceiling_s,
                    timeout_s=self.plan.ceiling_s + 60,
                    consumer=consumer,
                )
            return results
        finally:
            self.stop(canned)

    def scenario(self, peer: dict[str, Any], name: str, run: Callable[[], Any]) -> Any:
        started = time.monotonic()
        try:
            result = run()
        except Exception as error:  # one scenario failing must not lose the others
            log(f"  {name} failed: {error}")
            peer.setdefault("failures", {})[name] = f"{type(error).__name__}: {error}"[:2000]
            traceback.print_exc()
            return None
        peer["scenarios"][name] = result
        log(f"  {name} done in {time.monotonic() - started:.1f} s")
        return result

    def run(self) -> dict[str, Any]:
        plan = self.plan
        run_started = time.monotonic()
        log(
            f"mode {plan.name}; server under test on cpus {sorted(self.server_cpus)}, driver on {sorted(self.driver_cpus)}"
        )
        self.start_simulator()
        log(f"simulator on {self.sim_url}")
        try:
            self.results["loadgen_ceiling"] = self.loadgen_ceiling()
        except Exception as error:
            self.results["loadgen_ceiling"] = {"error": str(error)}
        for name in plan.peers:
            self.run_peer(name)
        self.results["duration_s"] = time.monotonic() - run_started
        return self.results

    def run_peer(self, name: str) -> None:
        plan = self.plan
        peer: dict[str, Any] = {"available": False, "scenarios": {}, "notes": []}
        self.results["peers"][name] = peer
        log(f"peer {name}")
        started = time.monotonic()
        target: Target | None = None
        database: str | None = None
        peer["machine_before"] = self.wait_for_quiet(plan.quiet_wait_s)
        try:
            self.http.post(f"{self.sim_url}/_control/reset").raise_for_status()
            if name == "direct":
                target = self.direct()
            elif name == "naive":
                target = self.naive()
            elif name == "litellm":
                target = self.litellm()
            elif name == "parley":
                target, database = self.parley()
            else:
                raise PeerUnavailable(f"unknown peer {name}")
        except Exception as error:
            peer["notes"].append(f"not run: {error}"[:2000])
            log(f"  {name} unavailable: {error}")
            if not isinstance(error, PeerUnavailable | TimeoutError | RuntimeError):
                traceback.print_exc()
            return
        peer["available"] = True
        peer["notes"].extend(target.notes)
        peer["startup_s"] = time.monotonic() - started
        assert target is not None
        try:
            self.scenario(peer, "warmup", lambda: self.warmup(target))
            peer["scenarios"].pop("warmup", None)
            if target.server is not None:
                # First, on a fresh process: memory freed by earlier scenarios would be reused and hide growth.
                self.scenario(peer, "memory", lambda: self.memory(target))
            self.scenario(peer, "ttft_single", lambda: self.ttft_single(target))
            self.scenario(peer, "burst", lambda: self.burst(target))
            if name == "direct":
                self.scenario(peer, "burst_trivial", lambda: self.burst(target, consumer="trivial"))
            self.scenario(peer, "turns", lambda: self.turns(target, database))
            if name == "parley" and self.one_user_pool is not None:
                one_user = Target("parley", target.port, target.server, self.one_user_pool.requests)
                self.scenario(peer, "turns_one_user", lambda: self.turns(one_user, database))
            if name != "direct":
                self.scenario(peer, "sweep", lambda: self.sweep(target))
            saturated_at: int | None = None
            for streams in plan.paced_levels:
                if saturated_at is not None:
                    peer.setdefault("skipped", {})[f"paced_{streams}"] = f"saturated at {saturated_at} streams"
                    continue
                result = self.scenario(peer, f"paced_{streams}", functools.partial(self.paced, target, streams))
                if name not in ("direct", "parley") and self.saturated(result, streams):
                    saturated_at = streams
            if name == "parley":
                self.capacity(target, peer)
            if name == "parley" and plan.profile:
                self.scenario(peer, "profile", lambda: self.profile_parley(target))
            if target.server is not None:
                peer["rss_end_kib"] = target.server.rss_kib()
                if not target.server.alive():
                    peer["notes"].append(f"the server exited: {target.server.log_tail(10)}")
            if name == "parley":
                self.parley_with_limits(target, peer)
                if plan.variants:
                    try:
                        self.parley_variants(target, peer)
                    except Exception as error:  # a restart that failed must not lose the rows measured already
                        log(f"  variants failed: {error}")
                        peer.setdefault("failures", {})["variants"] = f"{type(error).__name__}: {error}"[:2000]
                        traceback.print_exc()
        finally:
            if target is not None and target.server is not None:
                self.stop(target.server)
            if name == "parley":
                peer["stuck_turns"] = len(self.stuck_sessions)
            self.parley_database = None
            peer["duration_s"] = time.monotonic() - started
            log(f"  {name} finished in {peer['duration_s']:.0f} s")

    def parley_with_limits(self, target: Target, peer: dict[str, Any]) -> None:
        """Parley's default configuration counts rate limits at every turn start, under a lock on the user's
        row (the runs above have them off): the same Parley restarted with them counting but never refusing
        (the default 4 turns in flight per user, which the sessions' spread keeps to; a per-minute limit too
        high to reach), for what counting costs before the first token and per turn."""
        # Its one-stream series is compared with one of limits off taken the same way (a fresh restart, its
        # connections warmed), not with the early row, whose process has just served the memory scenario's
        # 1,000 streams on long-warm connections: measured that way, the comparison, not the counting, was most
        # of the gap between the two rows (b55d09b).
        late = self.restart_parley(target, "parley-late")
        late.tag = "late"
        try:
            self.scenario(peer, "warmup", lambda: self.warm_every_connection(late))
            peer["scenarios"].pop("warmup", None)
            self.scenario(peer, "ttft_single_late", lambda: self.ttft_single(late))
            if self.plan.variants:
                # The baseline of the variants' rows below, which are measured the same way (a fresh restart,
                # its connections warmed) and not against the early rows' long-running process.
                self.scenario(peer, "burst_late", lambda: self.burst(late))
                self.scenario(peer, "turns_late", lambda: self.turns(late, self.parley_database))
        finally:
            self.stop(late.server)
        counted = self.restart_parley_with_limits(late)
        try:
            self.scenario(peer, "warmup", lambda: self.warm_every_connection(counted))
            peer["scenarios"].pop("warmup", None)
            self.scenario(peer, "ttft_single_limits", lambda: self.ttft_single(counted))
            self.scenario(peer, "turns_limits", lambda: self.turns(counted, self.parley_database))
            peer["notes"].append(
                "Parley (limits): restarted after everything else with rate limits off (the one-stream row "
                "'measured last'), then with rate limits counting (4 turns in flight per user, 1,000,000 a "
                "minute) for the TTFT and turns rows marked 'limits counting'"
            )
        finally:
            self.stop(counted.server)

    def replica_cpus(self) -> list[set[int]]:
        return procs.replica_cores(sorted(self.server_cpus | self.driver_cpus), self.driver_cpus, self.plan.replicas)

    def parley_variants(self, target: Target, peer: dict[str, Any]) -> None:
        """Parley restarted (rate limits off, connections warmed, as the 'measured last' rows) with its event
        log on Redis: one process (burst, one-stream TTFT, turns), then `plan.replicas` processes sharing the
        database and Redis, the load generator's slots spread over them (burst, turns); then one process with
        background responses off (turns). Compared with the in-memory rows of the restart before the limits."""
        try:
            if self.redis is None:
                self.redis = redis_db.claim()
            claimed: redis_db.Claimed | None = self.redis
        except redis_db.RedisUnavailable as error:
            claimed = None
            peer["notes"].append(f"Parley (Redis log): not run, no Redis: {error}")
            log(f"  no Redis for the Redis rows: {error}")
        if claimed is not None:
            self.results["redis"] = {"version": claimed.version, "database": claimed.index}
            redis_env = {"PARLEY_REDIS_URL": claimed.url}
            shared = self.restart_parley(target, "parley-redis", redis_env)
            shared.uses_redis, shared.tag = True, "redis"
            try:
                self.scenario(peer, "warmup", lambda: self.warm_every_connection(shared))
                peer["scenarios"].pop("warmup", None)
                self.scenario(peer, "burst_redis", lambda: self.burst(shared))
                self.scenario(peer, "ttft_single_redis", lambda: self.ttft_single(shared))
                self.scenario(peer, "turns_redis", lambda: self.turns(shared, self.parley_database))
            finally:
                self.stop(shared.server)
            cpus = self.replica_cpus()
            assert self.parley_database is not None
            pool = replica_pool_size(asyncio.run(_connection_headroom(self.parley_database)), len(cpus))
            if pool < PARLEY_POOL_SIZE:
                peer["notes"].append(
                    f"Parley (replicas): each replica's database pool is {pool} connections, not "
                    f"{PARLEY_POOL_SIZE}: Postgres would not accept {len(cpus)} x {PARLEY_POOL_SIZE} beside the "
                    "connections already open"
                )
            replica_env = {**redis_env, "PARLEY_DATABASE_POOL_SIZE": str(pool)}
            try:
                replicas = self.start_replicas(target, cpus, replica_env)
            except Exception as error:
                peer.setdefault("failures", {})["replicas"] = f"{type(error).__name__}: {error}"[:2000]
                log(f"  replicas failed to start: {error}")
            else:
                try:
                    self.scenario(peer, "warmup", lambda: self.warm_every_connection(replicas))
                    peer["scenarios"].pop("warmup", None)
                    self.scenario(peer, "burst_replicas", lambda: self.burst(replicas))
                    self.scenario(peer, "turns_replicas", lambda: self.turns(replicas, self.parley_database))
                finally:
                    for server in replicas.servers:
                        self.stop(server)
            sharing = sorted({core for core in set().union(*cpus) if core in self.driver_cpus})
            placed = ", ".join(f"replica {number} on core {sorted(c)[0]}" for number, c in enumerate(cpus, 1))
            peer["notes"].append(
                f"Parley (Redis log): restarted with PARLEY_REDIS_URL on the machine's Redis {claimed.version} "
                f"(database {claimed.index} of its own, flushed at the end), connections warmed; then "
                f"{len(cpus)} replicas on the same Postgres database and Redis ({placed}"
                + (
                    f"; core {', '.join(map(str, sharing))} shared with the simulator and the load generator"
                    if sharing
                    else ""
                )
                + "), the load generator's slots alternating between them"
            )
        quiet = self.restart_parley(target, "parley-no-background", {"PARLEY_UPSTREAM_BACKGROUND": "false"})
        quiet.tag = "no-background"
        try:
            self.scenario(peer, "warmup", lambda: self.warm_every_connection(quiet))
            peer["scenarios"].pop("warmup", None)
            self.scenario(peer, "turns_no_background", lambda: self.turns(quiet, self.parley_database))
            peer["notes"].append(
                "Parley (background off): restarted with PARLEY_UPSTREAM_BACKGROUND=false (plain streamed responses "
                "upstream), connections warmed, for the turns row 'background off'; the turn lease's heartbeat (one "
                "write per process every quarter of PARLEY_TURN_LEASE_S) is per process, not per turn: no row "
                "isolates it"
            )
        finally:
            self.stop(quiet.server)

    def start_replicas(self, target: Target, cpus: list[set[int]], extra_env: dict[str, str]) -> Target:
        """Parley as len(cpus) processes on one database (and Redis, in `extra_env`), each pinned to its cores;
        the first on the port Parley was launched with."""
        assert self.parley_launch is not None
        argv, env, port = self.parley_launch
        self.stop(target.server)
        servers: list[procs.Server] = []
        try:
            for number, cores in enumerate(cpus, 1):
                replica_port = port if number == 1 else procs.free_port()
                replica_argv = [*argv[: argv.index("--port") + 1], str(replica_port)]
                servers.append(
                    self.start(
                        f"parley-replica-{number}",
                        replica_argv,
                        port=replica_port,
                        cpus=cores,
                        env={**env, **extra_env, "PARLEY_SPOOL_DIR": f"{env['PARLEY_SPOOL_DIR']}-{number}"},
                    )
                )
            for server in servers:
                procs.wait_healthy(server, "/readyz", timeout=90)
        except BaseException:
            for server in servers:
                self.stop(server)
            raise
        return Target("parley", port, servers[0], target.requests, extra=servers[1:], uses_redis=True, tag="replicas")

    def restart_parley_with_limits(self, target: Target) -> Target:
        """`target`'s Parley stopped and started again with rate limits counting but never refusing."""
        limits = {
            "PARLEY_RATE_LIMIT_TURNS_PER_MINUTE": "1000000",
            "PARLEY_RATE_LIMIT_CONCURRENT_TURNS": str(SESSIONS_PER_USER),
        }
        return self.restart_parley(target, "parley-limits", limits)

    def restart_parley(self, target: Target, label: str, extra_env: dict[str, str] | None = None) -> Target:
        """`target`'s Parley stopped (if it runs) and started again, as it was launched plus `extra_env`."""
        assert self.parley_launch is not None
        argv, env, port = self.parley_launch
        self.stop(target.server)
        server = self.start(label, argv, port=port, cpus=self.server_cpus, env={**env, **(extra_env or {})})
        try:
            procs.wait_healthy(server, "/readyz", timeout=90)
        except BaseException:
            self.stop(server)
            raise
        return Target("parley", port, server, target.requests)

    def direct_paced(self, streams: int) -> dict[str, Any] | None:
        direct = self.results["peers"].get("direct")
        if direct is None or not direct.get("available"):
            return None
        key = f"paced_{streams}"
        scenarios = direct["scenarios"]
        if key not in scenarios:
            self.scenario(direct, key, lambda: self.paced(self.direct(), streams))
        found: dict[str, Any] | None = scenarios.get(key)
        stalled = f"{key}_stalled"
        if found is not None and stalled not in scenarios and _delay_p99(found) > self.plan.lag_bound_ms:
            # One stall of the simulator and load generator's core (a collection, the scheduler) puts direct's
            # own p99 delay past the bound, and every relay would then pass that level on "added" lag
            # however late it was. Measured once more; the floor is the run with less delay, the other is kept.
            log(f"  direct at {streams} streams lagged {_delay_p99(found):.0f} ms at p99; measuring it again")
            again = self.paced(self.direct(), streams)
            kept, dropped = sorted((found, again), key=_delay_p99)
            scenarios[key], scenarios[stalled] = kept, dropped
            found = kept
        return found

    def saturated(self, result: dict[str, Any] | None, streams: int) -> bool:
        """Far past any bound (a second of added delay, or failed streams): larger levels are skipped."""
        if result is None:
            return True
        floor = self.direct_paced(streams)
        delay = added(result["delay_ms"], floor["delay_ms"], "p99") if floor else result["delay_ms"].get("p99", 0)
        return bool(result["errors"]) or result["timed_out"] or not delay < 1000

    def verdict(self, streams: int, result: dict[str, Any] | None) -> dict[str, Any]:
        return report.paced_verdict(
            streams,
            result,
            self.direct_paced(streams),
            tokens_per_second=self.plan.paced_tps,
            bound_ms=self.plan.lag_bound_ms,
        )

    def capacity(self, target: Target, peer: dict[str, Any]) -> None:
        """The largest number of paced streams with p99 added lag (gap and delay) under the bound."""
        plan = self.plan
        verdicts: dict[int, dict[str, Any]] = {}
        for streams in plan.paced_levels:
            verdicts[streams] = self.verdict(streams, peer["scenarios"].get(f"paced_{streams}"))

        def try_level(streams: int) -> dict[str, Any]:
            floor = self.direct_paced(streams)
            if floor is not None and report.delivered(floor, streams, plan.paced_tps) < report.DELIVERED:
                return {
                    "streams": streams,
                    "pass": False,
                    "rig_limited": True,
                    "why": "direct did not deliver the load",
                }
            result = self.scenario(peer, f"paced_{streams}", lambda: self.paced(target, streams))
            return self.verdict(streams, result)

        passing = [s for s, v in verdicts.items() if v["pass"]]
        failing = [s for s, v in verdicts.items() if not v["pass"]]
        if not failing:
            for streams in plan.capacity_levels:
                verdicts[streams] = try_level(streams)
                if not verdicts[streams]["pass"]:
                    failing.append(streams)
                    break
                passing.append(streams)
        if failing:
            low = max([s for s in passing if s < min(failing)], default=0)
            high = min(failing)
            for _ in range(plan.capacity_bisect_steps):
                middle = int(round((low + high) / 2 / 50) * 50)
                if middle <= low or middle >= high:
                    break
                verdicts[middle] = try_level(middle)
                if verdicts[middle]["pass"]:
                    low = middle
                else:
                    high = middle
        ordered = sorted(verdicts)
        best = 0
        for streams in ordered:
            if not verdicts[streams]["pass"]:
                break
            best = streams
        peer["capacity"] = {
            "streams": best,
            "first_miss": next((s for s in ordered if not verdicts[s]["pass"]), None),
            "levels": [verdicts[s] for s in ordered],
            "bound_ms": plan.lag_bound_ms,
        }
        log(f"  capacity: {best} paced streams under {plan.lag_bound_ms:.0f} ms")

    def profile_parley(self, target: Target) -> dict[str, Any]:
        """py-spy on Parley (on the driver core, not Parley's) during a burst and during paced streams."""
        assert target.server is not None
        pid = target.server.pid
        plan = self.plan
        summaries: dict[str, Any] = {}

        def profiled(
            label: str, start_at: float, duration: float, run: Callable[[Callable[[float], None]], Any]
        ) -> None:
            output = self.profiles / f"parley-{label}.txt"
            spy: list[Any] = []

            def during(elapsed: float) -> None:
                if not spy and elapsed >= start_at:
                    spy.append(profile.record(pid, output, duration, cpus=self.driver_cpus))

            result = run(during)
            for process in spy:
                _, err = process.communicate(timeout=duration + 60)
                if process.returncode != 0:
                    raise RuntimeError(f"py-spy failed: {err.decode(errors='replace')[-500:]}")
            summary = profile.summarize_file(output)
            summary["run"] = {
                "events_per_s": result.get("events_per_s"),
                "server_share": result["cpu"]["server_share"],
                "server_us_per_event": result["cpu"].get("server_us_per_event"),
            }
            summaries[label] = summary

        self.configure(tokens=plan.burst_tokens)
        profiled(
            "burst",
            1.0,
            plan.burst_s - 2,
            lambda during: self.load(
                target,
                "profile-burst",
                concurrency=plan.burst_concurrency,
                stop_starting_after_s=plan.burst_s,
                measure_from_s=1.0,
                measure_until_s=plan.burst_s,
                timeout_s=plan.burst_s + 120,
                during=during,
            ),
        )
        # Where Parley falls short: past its capacity, but not so far that the pool times out every turn.
        streams = min(500, max(plan.paced_levels))
        length, window = plan.paced_stream_s, plan.paced_window_s
        self.configure(tps=plan.paced_tps, tokens=round(length * plan.paced_tps))
        profiled(
            f"paced-{streams}",
            length,
            window,
            lambda during: self.load(
                target,
                f"profile-paced-{streams}",
                concurrency=streams,
                stagger_s=length,
                stop_starting_after_s=length + window,
                window=(length, length + window),
                measure_from_s=length,
                measure_until_s=length + window,
                tokens_per_second=plan.paced_tps,
                timeout_s=2 * length + window + 45,
                during=during,
            ),
        )
        self.configure(tokens=plan.turns_tokens)
        profiled(
            "turns",
            1.0,
            plan.turns_s - 2,
            lambda during: self.load(
                target,
                "profile-turns",
                concurrency=plan.turns_concurrency,
                stop_starting_after_s=plan.turns_s,
                timeout_s=plan.turns_s + 60,
                during=during,
            ),
        )
        return summaries


class PeerUnavailable(Exception):
    pass


def copy_outputs(out_dir: Path, docs_dir: Path) -> None:
    docs_dir.mkdir(parents=True, exist_ok=True)
    for name in ("results.json", "results.md"):
        shutil.copy(out_dir / name, docs_dir / name)
    for png in out_dir.glob("*.png"):
        shutil.copy(png, docs_dir / png.name)
