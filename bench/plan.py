"""How much of each scenario a run does: the full run (17-28 minutes) and the quick one (3-4)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

PEERS = ("direct", "naive", "litellm", "parley")


@dataclass(frozen=True)
class Plan:
    name: str
    peers: tuple[str, ...]
    # Loadgen ceiling: a canned server, 50 connections, the full parser and a trivial consumer.
    ceiling_s: float
    # (a) burst: unpaced streams of `burst_tokens` output tokens, `burst_concurrency` at once.
    burst_s: float
    # TTFT one stream at a time: unpaced, `ttft_tokens` tokens, `ttft_streams` in sequence.
    ttft_streams: int
    # (b) paced: closed loop at `paced_tps` tokens/s; each slot runs streams of `paced_stream_s` back to back,
    # slots staggered over one stream length, statistics over the `paced_window_s` when all slots are busy.
    paced_levels: tuple[int, ...]
    paced_stream_s: float
    paced_window_s: float
    # (c) capacity: more levels tried for Parley after `paced_levels` (and bisected down on a miss).
    capacity_levels: tuple[int, ...]
    capacity_bisect_steps: int
    # (d) full turns per second: `turns_concurrency` sessions sending short turns back to back.
    turns_s: float
    # (e) memory: `memory_streams` slow streams open at once.
    memory_streams: int
    # Cost per stream against tokens per stream (unpaced, `sweep_concurrency` at once).
    sweep_tokens: tuple[int, ...]
    sweep_s: float
    profile: bool
    # Parley restarted after the limits rows for its variants: the Redis event log (one process, then
    # `replicas` processes sharing the database and Redis) and background responses off.
    variants: bool = True
    replicas: int = 2
    burst_concurrency: int = 50
    burst_tokens: int = 500
    ttft_tokens: int = 20
    paced_tps: float = 30.0
    turns_concurrency: int = 32
    turns_tokens: int = 16
    memory_tps: float = 2.0
    memory_tokens: int = 40
    memory_ramp_s: float = 10.0
    sweep_concurrency: int = 16
    lag_bound_ms: float = 50.0
    # Before each peer, wait up to this long for other work on the machine to stop.
    quiet_wait_s: float = 30.0
    # Before each load run, wait up to this long for quiet; a run disturbed anyway is repeated this often.
    # Off by default: on a machine that other sessions keep busy, waiting only makes the run longer. Every
    # run records the other load it saw, and the report lists the disturbed ones.
    quiet_wait_run_s: float = 0.0
    disturbed_retries: int = 0

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def sessions_needed(self) -> int:
        return max(
            self.burst_concurrency,
            self.turns_concurrency,
            self.sweep_concurrency,
            self.ttft_streams,
            self.memory_streams,
            *self.paced_levels,
            *self.capacity_levels,
        )


FULL = Plan(
    name="full",
    peers=PEERS,
    ceiling_s=5.0,
    burst_s=10.0,
    ttft_streams=100,
    paced_levels=(100, 500, 1000),
    paced_stream_s=10.0,
    paced_window_s=8.0,
    capacity_levels=(1500, 2000, 3000),
    capacity_bisect_steps=3,
    turns_s=10.0,
    memory_streams=1000,
    sweep_tokens=(16, 64, 256, 1024),
    sweep_s=4.0,
    profile=True,
)

QUICK = Plan(
    name="quick",
    peers=("direct", "parley"),
    ceiling_s=2.0,
    burst_s=4.0,
    ttft_streams=30,
    paced_levels=(100,),
    paced_stream_s=5.0,
    paced_window_s=3.0,
    capacity_levels=(),
    capacity_bisect_steps=0,
    turns_s=4.0,
    memory_streams=200,
    memory_tokens=16,
    memory_ramp_s=2.0,
    sweep_tokens=(16, 256),
    sweep_s=2.0,
    profile=False,
    quiet_wait_s=0.0,
    quiet_wait_run_s=0.0,
    disturbed_retries=0,
)
