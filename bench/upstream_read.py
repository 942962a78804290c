"""`python -m bench.upstream_read [--rounds N] [--streams N]`: what reading the upstream body costs per token.

A development probe beside the harness (not part of a run): the simulator on the first core, this process
on the last, the real client path (`build_openai_client`, `open_stream`) against paced streams, every token
its own socket read. Rounds alternate two ways of taking the body, in the same process and run:

- *push*: `UpstreamStream.deliver`, the bytes handed over from aiohttp's data callback (what Parley does);
- *read*: the loop Parley ran before, `await readany()` on aiohttp's body stream per read (the baseline).

Prints this process's CPU per token for each (median over rounds) and their ratio. The consumer only counts
bytes: the difference is the read path alone.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import time
from dataclasses import replace

import aiohttp

from app.settings import Settings
from app.upstream.client import build_openai_client
from app.upstream.responses import StreamPolicy, UpstreamStream, open_stream
from bench.plan import QUICK
from bench.run import MODEL, REPO, Harness, log

POLICY = StreamPolicy(read_timeout_s=30.0, connect_timeout_s=5.0, max_attempts=1)
BODY = {"model": MODEL, "input": "Tell me about benchmarks.", "stream": True}


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _take(stream: UpstreamStream, way: str) -> int:
    received = 0

    def count(chunk: bytes) -> None:
        nonlocal received
        received += 1

    try:
        if way == "push":
            await stream.deliver(count)
        else:
            content = stream._plain_body()
            assert isinstance(content, aiohttp.StreamReader)
            readany = content.readany
            while await readany():
                received += 1
    finally:
        await stream.aclose()
    return received


async def _round(base_url: str, way: str, streams: int) -> tuple[float, int]:
    """(CPU seconds of this process, socket reads taken) for `streams` paced streams at once."""
    client = build_openai_client(Settings(openai_api_key="sk-bench"), base_url=f"{base_url}/v1")
    try:
        opened = await asyncio.gather(*(open_stream(client, BODY, POLICY) for _ in range(streams)))
        before = cpu_seconds()
        reads = await asyncio.gather(*(_take(stream, way) for stream in opened))
        return cpu_seconds() - before, sum(reads)
    finally:
        await client.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.upstream_read", description=__doc__.split("\n\n")[1])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--tokens", type=int, default=150)
    parser.add_argument("--tps", type=float, default=50.0)
    args = parser.parse_args()
    out = REPO / "bench" / "results" / f"upstream-read-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True)
    harness = Harness(replace(QUICK, profile=False), out)  # pins this process to the first core
    os.sched_setaffinity(0, harness.server_cpus)  # ... and this probe is the server side: the last one
    per_token: dict[str, list[float]] = {"read": [], "push": []}
    try:
        harness.start_simulator()
        harness.configure(tps=args.tps, tokens=args.tokens)
        import uvloop

        for round_ in range(args.rounds):
            for way in ("read", "push") if round_ % 2 == 0 else ("push", "read"):
                cpu_s, reads = uvloop.run(_round(harness.sim_url, way, args.streams))
                per_token[way].append(cpu_s / reads * 1e6)
                log(f"round {round_ + 1} {way}: {reads} reads, {cpu_s / reads * 1e6:.2f} µs CPU per read")
    finally:
        harness.close()
    read, push = (statistics.median(per_token[way]) for way in ("read", "push"))
    print(f"{args.streams} streams at {args.tps:g} tokens/s, {args.rounds} rounds each, this process's CPU per read:")
    print(f"  read (await readany):   {read:6.2f} µs")
    print(f"  push (deliver):         {push:6.2f} µs   ({push / read:.2f}x the read loop's)")


if __name__ == "__main__":
    main()
