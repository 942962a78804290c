"""`python -m bench.simulator_state [--conversations N] [--responses N]`: what the simulator's stored state costs.

A development probe beside the harness (not part of a run). The simulator keeps every stored response and
conversation for its process's life, and a full benchmark run sends it ~25,000 responses: what a response
start costs as its conversation grows, and what a full collection costs as responses accumulate, decide
whether the upstream itself disturbs a measurement late in a run. In process, through ASGI (no sockets): turns
of 300 unpaced tokens round-robin over the conversations, streamed and read to the end; after every 1,000
it prints the median time of a create (to the end of its stream), the time of one `gc.collect()` and the
objects the collector tracks.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time

import httpx

from app.simulator import create_simulator_app

HEADERS = {"Authorization": "Bearer sk-probe"}


async def probe(conversations: int, responses: int) -> None:
    app = create_simulator_app()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://simulator") as client:
        await client.post("/_control/config", json={"output_tokens": 300})
        ids = [
            (await client.post("/v1/conversations", json={}, headers=HEADERS)).json()["id"]
            for _ in range(conversations)
        ]
        done = 0
        while done < responses:
            times = []
            for conversation in ids:
                body = {
                    "model": "gpt-4.1-mini",
                    "instructions": "You are a helpful assistant.",
                    "input": [{"role": "user", "content": "Tell me about benchmarks."}],
                    "conversation": conversation,
                    "stream": True,
                }
                started = time.perf_counter()
                answer = await client.post("/v1/responses", json=body, headers=HEADERS)
                times.append(time.perf_counter() - started)
                if answer.status_code != 200 or b"response.completed" not in answer.content:
                    raise SystemExit(f"the simulator failed a turn: {answer.status_code} {answer.text[:200]}")
                done += 1
                if done % 1000 == 0:
                    started = time.perf_counter()
                    gc.collect()
                    collection = time.perf_counter() - started
                    print(
                        f"{done:6d} responses ({done // conversations} turns a conversation): create p50 "
                        f"{statistics.median(times) * 1000:.2f} ms, full collection {collection * 1000:.1f} ms, "
                        f"{len(gc.get_objects())} tracked objects",
                        flush=True,
                    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.simulator_state", description=__doc__.split("\n\n")[1])
    parser.add_argument("--conversations", type=int, default=200)
    parser.add_argument("--responses", type=int, default=6000)
    args = parser.parse_args()
    asyncio.run(probe(args.conversations, args.responses))


if __name__ == "__main__":
    main()
