"""`python -m bench.ttft_phases [--rounds N] [--sessions N] [--paced N]`: where a stream's time to first token goes.

A development probe beside the harness (not part of a run): the simulator and Parley on Postgres started as the
harness starts them, Parley with phase timers (`bench/phase_timers/sitecustomize.py`), then rounds of 100
sequential turns, each after a direct series of the same size (added TTFT as the harness computes it); or, with
`--paced N`, rounds of the harness's paced level of N streams (each after direct's), where turns start while
others stream. Prints the median time between consecutive phases of a turn, inside the server.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from dataclasses import replace
from itertools import pairwise
from pathlib import Path

from bench.plan import FULL, QUICK
from bench.run import REPO, Harness, log

PHASES = (
    "accepted",
    "request_begins",
    "request_read",
    "middlewares",
    "authenticate>",
    "authenticate<",
    "start_turn>",
    "statement>",
    "statement<",
    "start_turn<",
    "spawn",
    "open_stream>",
    "upstream_request_written",
    "upstream_headers",
    "open_stream<",
    "response_starts",
    "first_upstream_chunk",
)


def phase_table(marks: list[tuple[str, float, int | None]]) -> list[tuple[str, int, float]]:
    """(from → to, turns, median ms) for consecutive phases, a turn being the marks of one key (the client's
    port) from its connection's accept (or its request_begins) to the next; each phase's first mark counts."""
    turns: list[dict[str, float]] = []
    current: dict[int | None, dict[str, float]] = {}
    for label, at, key in marks:
        turn = current.get(key)
        # A turn starts at its connection's accept (when the server marks it), else at its request's first byte.
        if label == "accepted" or (label == "request_begins" and (turn is None or "request_begins" in turn)):
            turn = current[key] = {}
            turns.append(turn)
        if turn is not None:
            turn.setdefault(label, at)
    gaps: dict[str, list[float]] = {}
    for turn in turns:
        if "first_upstream_chunk" not in turn:
            continue  # not a streamed turn (session setup, a warm-up that failed)
        seen = [phase for phase in PHASES if phase in turn]
        for before, after in pairwise(seen):
            gaps.setdefault(f"{before} → {after}", []).append((turn[after] - turn[before]) * 1000)
        gaps.setdefault("inside the server: request_begins → first_upstream_chunk", []).append(
            (turn["first_upstream_chunk"] - turn["request_begins"]) * 1000
        )
        if "accepted" in turn:
            gaps.setdefault("from the accept: accepted → first_upstream_chunk", []).append(
                (turn["first_upstream_chunk"] - turn["accepted"]) * 1000
            )
    return [(name, len(values), statistics.median(values)) for name, values in gaps.items()]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ttft_phases", description=__doc__.split("\n\n")[1])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sessions", type=int, default=200, help="sessions to make (4 per user)")
    parser.add_argument("--paced", type=int, help="rounds of this many paced streams instead of sequential turns")
    parser.add_argument(
        "--after-turns", action="store_true", help="run the turns scenario first, as a full run does before these rows"
    )
    parser.add_argument(
        "--limits", action="store_true", help="Parley with rate limits counting, as the full run's 'limits' rows"
    )
    args = parser.parse_args()
    out = REPO / "bench" / "results" / f"phases-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True)
    marks_path = out / "phases.json"
    os.environ["PYTHONPATH"] = str(Path(__file__).parent / "phase_timers")
    os.environ["PARLEY_PHASE_TIMERS"] = str(marks_path)
    sessions = max(args.sessions, 2 * (args.paced or 0))
    plan = replace(QUICK, ttft_streams=100, memory_streams=sessions, paced_levels=(), capacity_levels=(), profile=False)
    if args.paced:
        plan = replace(plan, paced_stream_s=FULL.paced_stream_s, paced_window_s=FULL.paced_window_s)
    harness = Harness(plan, out)
    try:
        harness.start_simulator()
        target, database = harness.parley()
        if args.after_turns:
            harness.warmup(target)
            harness.turns(target, database)
        if args.limits:
            # As the full run takes its limits rows: a restart, then every database connection warmed.
            target = harness.restart_parley_with_limits(target)
            harness.warm_every_connection(target)
        else:
            harness.warmup(target)
        for round_ in range(args.rounds):
            if args.paced:
                direct_result = harness.paced(harness.direct(), args.paced)
                parley_result = harness.paced(target, args.paced)
                direct, parley = direct_result["ttft_ms"]["p50"], parley_result["ttft_ms"]["p50"]
                for name, result in (("direct", direct_result), ("parley", parley_result)):
                    lag = result.get("own_loop_lag_ms") or {}
                    log(
                        f"  against {name}: first byte p50 {result['first_byte_ms'].get('p50', 0):.1f} ms; the load "
                        f"generator's own loop late p50 {lag.get('p50', 0):.1f} / p99 {lag.get('p99', 0):.1f} ms"
                    )
            else:
                result = harness.ttft_single(target)
                parley, direct = result["ttft_ms"]["p50"], result["direct_just_before"]["ttft_ms"]["p50"]
            log(f"round {round_ + 1}: TTFT p50 {parley:.2f} ms, direct {direct:.2f}, added {parley - direct:.2f}")
    finally:
        os.environ.pop("PYTHONPATH")  # the servers' environment only
        harness.close()  # Parley exits and writes its marks
    if not marks_path.exists():
        log("no phase marks were written (was Parley stopped cleanly?)")
        return
    marks = json.loads(marks_path.read_text())
    probes = ("loop_late", "gc")
    for name, count, median in phase_table([(label, at, key) for label, at, key in marks if label not in probes]):
        print(f"{median:7.3f} ms  {name}  ({count} turns)")
    print_loop_lateness([(at, key) for label, at, key in marks if label == "loop_late"])
    print_collections([key for label, _, key in marks if label == "gc"])


def print_collections(keys: list[int]) -> None:
    """The garbage collector's runs in Parley over the probe, by generation: how many, median and longest."""
    by_generation: dict[int, list[float]] = {}
    for key in keys:
        by_generation.setdefault(key % 10, []).append(key // 10 / 1000)
    for generation, lengths in sorted(by_generation.items()):
        lengths.sort()
        print(
            f"collections of generation {generation}: {len(lengths)}, median {lengths[len(lengths) // 2]:.2f} ms, "
            f"longest {lengths[-1]:.1f} ms, {sum(lengths):.0f} ms in all"
        )


def print_loop_lateness(samples: list[tuple[float, int]]) -> None:
    """How late Parley's loop woke a 5-ms sleep, second by second where it was ever 20 ms late."""
    by_second: dict[int, list[float]] = {}
    for at, late_us in samples:
        by_second.setdefault(int(at), []).append(late_us / 1000)
    if not by_second:
        return
    first = min(by_second)
    print("Parley's loop, a 5-ms sleep woke late by (ms): second, wake-ups, p50, max")
    for second in sorted(by_second):
        values = sorted(by_second[second])
        if values[-1] >= 20:
            print(f"  {second - first:4d}  {len(values):4d}  {values[len(values) // 2]:6.1f}  {values[-1]:6.1f}")


if __name__ == "__main__":
    main()
