"""The relay's speed for one long turn with the turn's event log in memory only, and shared on Redis.

    uv run python -m bench.redis_log [--tokens 100000] [--rounds 3]

Parley (`parley serve`, SQLite) runs alone on the last core; the standalone simulator (unpaced), a throw-away
`redis-server` and this client share the first. Each round starts a fresh Parley in each mode, alternating, sends
one warm-up turn and then one turn of `--tokens` tokens, and reads its stream to the end. Reported per mode: the
median over rounds of relayed events per second (first byte to last, at the client) and of Parley's CPU per event
(its whole process, so the final write is in it too). With Redis, the turn is then read whole from a second replica
(sharing the SQLite file and Redis, on the first core) as a resume would: its events per second from Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from bench import procs

VENV_BIN = Path(sys.executable).parent
ADMIN_TOKEN = "bench-admin-" + uuid.uuid4().hex


def cores() -> tuple[set[int], set[int]]:
    available = sorted(os.sched_getaffinity(0))
    return {available[0]}, {available[-1]}


def start_redis(log_dir: Path, cpus: set[int]) -> procs.Server:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed")
    port = procs.free_port()
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    server = procs.start("redis", argv, port=port, cpus=cpus, log_dir=log_dir)
    deadline = time.monotonic() + 10
    while subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True, check=False).returncode != 0:
        if time.monotonic() > deadline:
            raise RuntimeError("redis-server did not start")
        time.sleep(0.05)
    return server


def start_parley(
    name: str, *, database: Path, simulator: str, redis_url: str | None, cpus: set[int], log_dir: Path
) -> procs.Server:
    port = procs.free_port()
    env = {
        "PARLEY_DATABASE_URL": f"sqlite+aiosqlite:///{database}",
        "PARLEY_SPOOL_DIR": str(log_dir / f"spool-{name}"),
        "OPENAI_API_KEY": "sk-bench",
        "OPENAI_BASE_URL": f"{simulator}/v1",
        "PARLEY_ADMIN_TOKEN": ADMIN_TOKEN,
        "PARLEY_SECRET_KEY": "bench-secret-shared-by-the-replicas-0123456789",
        "PARLEY_RATE_LIMIT_TURNS_PER_MINUTE": "0",
        "PARLEY_RATE_LIMIT_CONCURRENT_TURNS": "0",
        "PARLEY_LOG_LEVEL": "WARNING",
        # Its sessions are untitled: no title call after the warm-up turn to overlap the measured one.
        "PARLEY_TITLE_MODEL": "off",
    }
    if redis_url is not None:
        env["PARLEY_REDIS_URL"] = redis_url
    argv = [str(VENV_BIN / "parley"), "serve", "--host", "127.0.0.1", "--port", str(port)]
    server = procs.start(name, argv, port=port, cpus=cpus, env=env, log_dir=log_dir)
    procs.wait_healthy(server, "/readyz", timeout=90)
    return server


async def read_stream(response: httpx.Response) -> tuple[int, float]:
    """(events, seconds from the first byte to the last) of an SSE body: its `id:` lines (every frame has one,
    after a newline: the first frame's `retry:` line or the previous frame's blank line)."""
    events = 0
    first: float | None = None
    tail = b""
    async for chunk in response.aiter_raw():
        if first is None:
            first = time.perf_counter()
        block = tail + chunk
        # The tail is shorter than the pattern: a match is never counted twice.
        events += block.count(b"\nid: ")
        tail = block[-4:]
    return events, time.perf_counter() - (first or time.perf_counter())


async def user_and_session(http: httpx.AsyncClient) -> dict[str, str]:
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    user = (await http.post("/v1/admin/users", json={"name": f"bench-{uuid.uuid4().hex[:8]}"}, headers=admin)).json()
    key = (await http.post(f"/v1/admin/users/{user['id']}/keys", json={}, headers=admin)).json()["key"]
    headers = {"Authorization": f"Bearer {key}"}
    session = (await http.post("/v1/sessions", json={}, headers=headers)).json()
    return {"session": session["id"], "auth": headers["Authorization"]}


async def one_turn(http: httpx.AsyncClient, who: dict[str, str], simulator: str, tokens: int) -> dict[str, Any]:
    await http.post(f"{simulator}/_control/config", json={"tokens_per_second": 0, "output_tokens": tokens})
    async with http.stream(
        "POST",
        f"/v1/sessions/{who['session']}/messages",
        json={"input": "Tell me about benchmarks."},
        headers={"Authorization": who["auth"]},
    ) as response:
        events, seconds = await read_stream(response)
    turns = (await http.get(f"/v1/sessions/{who['session']}/turns", headers={"Authorization": who["auth"]})).json()
    return {"events": events, "seconds": seconds, "turn_id": turns["data"][0]["id"]}


async def measure(parley: procs.Server, simulator: str, tokens: int, replica: procs.Server | None) -> dict[str, float]:
    async with httpx.AsyncClient(base_url=parley.base_url, timeout=300) as http:
        who = await user_and_session(http)
        await one_turn(http, who, simulator, 2000)  # warm-up
        cpu = parley.cpu_seconds()
        turn = await one_turn(http, who, simulator, tokens)
        cpu = parley.cpu_seconds() - cpu
        result = {
            "events": turn["events"],
            "events_per_s": turn["events"] / turn["seconds"],
            "cpu_us_per_event": cpu / turn["events"] * 1e6,
        }
        if replica is not None:
            async with (
                httpx.AsyncClient(base_url=replica.base_url, timeout=300) as other,
                other.stream(
                    "GET",
                    f"/v1/sessions/{who['session']}/turns/{turn['turn_id']}/events",
                    headers={"Authorization": who["auth"]},
                ) as response,
            ):
                events, seconds = await read_stream(response)
            assert events == turn["events"], (events, turn["events"])
            result["replay_on_b_events_per_s"] = events / seconds
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    driver, server_cpus = cores()
    with tempfile.TemporaryDirectory(prefix="parley-bench-redis-") as tmp:
        log_dir = Path(tmp)
        sim_port = procs.free_port()
        simulator = procs.start(
            "simulator",
            [str(VENV_BIN / "parley"), "simulator", "--port", str(sim_port)],
            port=sim_port,
            cpus=driver,
            log_dir=log_dir,
        )
        redis = start_redis(log_dir, driver)
        results: dict[str, list[dict[str, float]]] = {"memory": [], "redis": []}
        try:
            procs.wait_healthy(simulator, "/_control/config")
            for round_ in range(args.rounds):
                for mode in ("memory", "redis") if round_ % 2 == 0 else ("redis", "memory"):
                    database = log_dir / f"parley-{mode}-{round_}.db"
                    redis_url = f"redis://127.0.0.1:{redis.port}/0" if mode == "redis" else None
                    parley = start_parley(
                        "parley",
                        database=database,
                        simulator=simulator.base_url,
                        redis_url=redis_url,
                        cpus=server_cpus,
                        log_dir=log_dir,
                    )
                    replica = (
                        start_parley(
                            "replica",
                            database=database,
                            simulator=simulator.base_url,
                            redis_url=redis_url,
                            cpus=driver,
                            log_dir=log_dir,
                        )
                        if redis_url
                        else None
                    )
                    try:
                        result = asyncio.run(measure(parley, simulator.base_url, args.tokens, replica))
                    finally:
                        parley.stop()
                        if replica is not None:
                            replica.stop()
                    results[mode].append(result)
                    print(mode, {k: round(v, 2) for k, v in result.items()}, flush=True)
        finally:
            redis.stop()
            simulator.stop()
    print(f"\none turn of {args.tokens:,} tokens, median of {args.rounds} rounds (Parley alone on core {server_cpus}):")
    for mode, rows in results.items():
        keys = rows[0].keys()
        print(mode, {key: round(statistics.median(row[key] for row in rows), 2) for key in keys})


if __name__ == "__main__":
    main()
