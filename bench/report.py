"""From a run's raw results: the ratios and floors, a Markdown report, and the plots."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.stats import added, linear_fit

PEER_LABELS = {"direct": "direct", "naive": "naive relay", "litellm": "LiteLLM", "parley": "Parley"}


def _scenario(results: dict[str, Any], peer: str, name: str) -> dict[str, Any] | None:
    entry = results["peers"].get(peer)
    if not entry or not entry.get("available"):
        return None
    found: dict[str, Any] | None = entry["scenarios"].get(name)
    return found


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
        return None
    return a / b


def _added(results: dict[str, Any], peer: str, scenario: str, metric: str, quantile: str) -> float | None:
    return _added_to(results, peer, scenario, scenario, metric, quantile)


def _added_to(
    results: dict[str, Any], peer: str, scenario: str, direct_scenario: str, metric: str, quantile: str
) -> float | None:
    """`peer`'s `scenario` over direct's `direct_scenario` (the same workload)."""
    mine = _scenario(results, peer, scenario)
    floor = _scenario(results, "direct", direct_scenario)
    if mine is not None and "direct_just_before" in mine:
        floor = mine["direct_just_before"]  # the floor measured right before this series (one-stream TTFT)
    if mine is None or floor is None:
        return None
    value = added(mine[metric], floor[metric], quantile)
    return None if math.isnan(value) else value


def paced_levels(results: dict[str, Any]) -> list[int]:
    levels: set[int] = set()
    for entry in results["peers"].values():
        for name in entry.get("scenarios", {}):
            if name.startswith("paced_"):
                levels.add(int(name.split("_")[1]))
    return sorted(levels)


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    peers = [p for p in results["peers"] if results["peers"][p].get("available")]
    burst = {p: (_scenario(results, p, "burst") or {}).get("events_per_s") for p in peers}
    summary: dict[str, Any] = {
        "burst_events_per_s": burst,
        "burst_ratio": {p: _ratio(burst.get("parley"), burst.get(p)) for p in peers if p != "parley"},
        "added_ttft_single_ms": {
            p: {q: _added(results, p, "ttft_single", "ttft_ms", q) for q in ("p50", "p99")} for p in peers
        },
        "added_ttft_single_limits_ms": {
            q: _added_to(results, "parley", "ttft_single_limits", "ttft_single", "ttft_ms", q) for q in ("p50", "p99")
        },
        "added_ttft_single_late_ms": {
            q: _added_to(results, "parley", "ttft_single_late", "ttft_single", "ttft_ms", q) for q in ("p50", "p99")
        },
        "paced": {},
        "turns_per_s": {p: (_scenario(results, p, "turns") or {}).get("turns_per_s") for p in peers},
        "kib_per_stream": {p: kib_per_stream(_scenario(results, p, "memory")) for p in peers},
        "server_us_per_event_burst": {
            p: ((_scenario(results, p, "burst") or {}).get("cpu") or {}).get("server_us_per_event") for p in peers
        },
        "capacity": capacity_summary(results),
    }
    for level in paced_levels(results):
        if level not in results["plan"]["paced_levels"]:
            continue  # the capacity ladder's extra levels are in the detail table
        key = f"paced_{level}"
        summary["paced"][level] = {
            p: {
                "ok": (_scenario(results, p, key) or {}).get("ok"),
                "streams": (_scenario(results, p, key) or {}).get("streams"),
                **{
                    f"added_{metric.split('_')[0]}_{q}": _added(results, p, key, metric, q)
                    for metric in ("ttft_ms", "gap_ms", "delay_ms")
                    for q in ("p50", "p99")
                },
                "server_share": ((_scenario(results, p, key) or {}).get("cpu") or {}).get("server_share"),
                "delay_p99": ((_scenario(results, p, key) or {}).get("delay_ms") or {}).get("p99"),
                "delivered": delivered(_scenario(results, p, key) or {}, level, results["plan"]["paced_tps"]),
            }
            for p in peers
            if _scenario(results, p, key) is not None
        }
    summary["variants"] = variants(results)
    redis_burst = next((row["burst_events_per_s"] for row in summary["variants"] if row["key"] == "redis"), None)
    summary["burst_redis_ratio"] = {p: _ratio(redis_burst, burst.get(p)) for p in peers if p != "parley"}
    summary["targets"] = targets(summary)
    return summary


# Parley restarted after the main rows (rate limits off, connections warmed): (key, label, burst scenario, turns
# scenario). The first is the baseline of the others.
VARIANTS = (
    ("memory", "in-memory event log", "burst_late", "turns_late"),
    ("redis", "event log on Redis", "burst_redis", "turns_redis"),
    ("replicas", "replicas, event log on Redis", "burst_replicas", "turns_replicas"),
    ("no_background", "background responses off", None, "turns_no_background"),
    ("limits", "rate limits counting", None, "turns_limits"),
)


def _cpu_per(result: dict[str, Any] | None, key: str, per: float | None, scale: float) -> float | None:
    value = ((result or {}).get("cpu") or {}).get(key)
    return value * scale / per if value is not None and per else None


def variants(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Parley's variants measured the same way (a fresh restart, connections warmed), each against the
    in-memory baseline: burst events/s and turns/s, and Parley's and Redis's CPU per event and per turn."""
    litellm_burst = (_scenario(results, "litellm", "burst") or {}).get("events_per_s")
    rows: list[dict[str, Any]] = []
    for key, label, burst_name, turns_name in VARIANTS:
        burst = _scenario(results, "parley", burst_name) if burst_name else None
        turns = _scenario(results, "parley", turns_name)
        if burst is None and turns is None:
            continue
        events = (burst or {}).get("events")
        done = (turns or {}).get("ok")
        processes = ((burst or turns or {}).get("cpu") or {}).get("server_processes") or 1
        rows.append(
            {
                "key": key,
                "label": f"{processes} {label}" if key == "replicas" else label,
                "processes": processes,
                "burst_events_per_s": (burst or {}).get("events_per_s"),
                "burst_vs_litellm": _ratio((burst or {}).get("events_per_s"), litellm_burst),
                "server_us_per_event": _cpu_per(burst, "server_s", events, 1e6),
                "redis_us_per_event": _cpu_per(burst, "redis_s", events, 1e6),
                "turns_per_s": (turns or {}).get("turns_per_s"),
                "server_ms_per_turn": _cpu_per(turns, "server_s", done, 1e3),
                "redis_ms_per_turn": _cpu_per(turns, "redis_s", done, 1e3),
                # Streams completed by each replica, in the replicas' order.
                "ok_by_replica": {
                    name: [
                        ((result or {}).get("ok_by_port") or {}).get(str(port), 0) for port in result["replica_ports"]
                    ]
                    for name, result in (("burst", burst), ("turns", turns))
                    if result and result.get("replica_ports")
                },
                "cpu_s_by_replica": {
                    name: result["cpu"]["server_s_by_process"]
                    for name, result in (("burst", burst), ("turns", turns))
                    if result and (result.get("cpu") or {}).get("server_s_by_process")
                },
            }
        )
    if all(row["key"] == "limits" for row in rows):
        return []  # a run before the variants: its limits row is in the peers' table
    base = next((row for row in rows if row["key"] == "memory"), None)
    for row in rows:
        row["burst_vs_memory"] = _ratio(row["burst_events_per_s"], (base or {}).get("burst_events_per_s"))
        row["turns_vs_memory"] = _ratio(row["turns_per_s"], (base or {}).get("turns_per_s"))
        mine, theirs = row["server_ms_per_turn"], (base or {}).get("server_ms_per_turn")
        row["added_ms_per_turn"] = mine - theirs if mine is not None and theirs is not None else None
    return rows


def kib_per_stream(result: dict[str, Any] | None) -> float | None:
    """RSS growth over the streams that were really open (a stream refused with an error holds nothing)."""
    if not result or "memory" not in result:
        return None
    memory = result["memory"]
    # Prefer the streams whose sockets were open while RSS was sampled; else the streams that succeeded.
    by_sockets = memory.get("open_streams_by_sockets")
    open_streams = round(by_sockets) if by_sockets and by_sockets > 0 else result["ok"]
    if not open_streams or memory.get("open_kib") is None:
        return None
    return float(memory["open_kib"] - memory["baseline_kib"]) / int(open_streams)


# A paced run delivered its load when at least this share of the scheduled token events arrived.
DELIVERED = 0.95


def delivered(result: dict[str, Any], streams: int, tokens_per_second: float) -> float:
    """Events that arrived in the window per second, over the events the streams were scheduled to send."""
    return float(result.get("events_per_s") or 0.0) / (streams * tokens_per_second)


def paced_verdict(
    streams: int,
    result: dict[str, Any] | None,
    floor: dict[str, Any] | None,
    *,
    tokens_per_second: float,
    bound_ms: float,
) -> dict[str, Any]:
    """Does the peer carry `streams` paced streams? It must deliver the load (no failed streams, at least
    DELIVERED of the scheduled events) with p99 inter-event gap and delivery delay within `bound_ms` of
    direct's. When direct itself did not deliver the load, or lagged past the bound itself (its p99 delay),
    the simulator and load generator's core was the limit: the level measures the rig, not the peer."""
    if result is None or floor is None:
        return {"streams": streams, "pass": False, "rig_limited": False, "why": "no result"}
    gap = added(result["gap_ms"], floor["gap_ms"], "p99")
    delay = added(result["delay_ms"], floor["delay_ms"], "p99")
    share = delivered(result, streams, tokens_per_second)
    floor_share = delivered(floor, streams, tokens_per_second)
    floor_delay = floor["delay_ms"].get("p99")
    rig_limited = (
        floor_share < DELIVERED or bool(floor["errors"]) or (floor_delay is not None and floor_delay > bound_ms)
    )
    ok = not result["errors"] and not result["timed_out"] and share >= DELIVERED and gap < bound_ms and delay < bound_ms
    # A level the rig could not carry is no pass: the ladder stops there (or bisects below it).
    ok = ok and not rig_limited
    return {
        "streams": streams,
        "pass": ok,
        "added_gap_p99_ms": gap,
        "added_delay_p99_ms": delay,
        "delivered": share,
        "errors": result["errors"],
        "server_cpu_share": result["cpu"]["server_share"],
        "server_core_busy": result["cpu"].get("server_core_busy"),
        "floor_delay_p99_ms": floor["delay_ms"].get("p99"),
        "floor_delivered": floor_share,
        "rig_limited": rig_limited,
    }


def capacity_summary(results: dict[str, Any]) -> dict[str, Any] | None:
    """The ladder's levels judged by `paced_verdict`; the ladder ends at the first miss, or at the first
    level where direct itself did not deliver the load (that measures the rig, not Parley)."""
    raw = (results["peers"].get("parley") or {}).get("capacity")
    if not raw:
        return None
    plan = results["plan"]
    levels = sorted(
        (
            paced_verdict(
                level["streams"],
                _scenario(results, "parley", f"paced_{level['streams']}"),
                _scenario(results, "direct", f"paced_{level['streams']}"),
                tokens_per_second=plan["paced_tps"],
                bound_ms=plan["lag_bound_ms"],
            )
            for level in raw["levels"]
        ),
        key=lambda level: level["streams"],
    )
    best = 0
    limit: dict[str, Any] | None = None
    for level in levels:
        if level.get("rig_limited"):
            limit = {"streams": level["streams"], "why": "rig-limited (direct did not deliver the load in time)"}
            break
        if not level["pass"]:
            limit = {"streams": level["streams"], "why": "missed the bound"}
            break
        best = level["streams"]
    parley = results["peers"]["parley"]["scenarios"]
    # What one paced stream costs Parley in CPU (share of a core), from its least loaded paced run.
    per_stream = None
    for level in levels:
        result = parley.get(f"paced_{level['streams']}")
        if result and result["cpu"].get("server_share") and not result["errors"]:
            per_stream = result["cpu"]["server_share"] / level["streams"]
            break
    return {
        **raw,
        "levels": levels,
        "streams": best,
        "limit": limit,
        "cpu_share_per_stream": per_stream,
        "cpu_bound_streams": 0.8 / per_stream if per_stream else None,
    }


# The floors the project holds (docs/benchmarks.md): Parley against the other relays of the same run, and one
# absolute bound. A row whose peer did not run (the quick run has neither the naive relay nor LiteLLM) is not judged.
BURST_FLOORS = (("litellm", 10.0), ("naive", 5.0))
BURST_REDIS_FLOOR_VS_LITELLM = 10.0
TTFT_SHARE_OF_LITELLM = 0.5
PACED_100_TTFT_P99_MS = 50.0
TURNS_FLOOR_VS_LITELLM = 4.0


def targets(summary: dict[str, Any]) -> list[dict[str, Any]]:
    ratio = summary["burst_ratio"]
    rows: list[dict[str, Any]] = []

    def row(name: str, goal: str, value: float | None, ok: bool | None, unit: str = "") -> None:
        rows.append({"target": name, "goal": goal, "measured": value, "unit": unit, "met": ok})

    for peer, goal in BURST_FLOORS:
        value = ratio.get(peer)
        row(
            f"burst throughput vs {PEER_LABELS[peer]}",
            f"≥ {goal:g}x",
            value,
            None if value is None else value >= goal,
            "x",
        )
    redis_ratio = (summary.get("burst_redis_ratio") or {}).get("litellm")
    row(
        "burst throughput with the Redis log vs LiteLLM",
        f"≥ {BURST_REDIS_FLOOR_VS_LITELLM:g}x",
        redis_ratio,
        None if redis_ratio is None else redis_ratio >= BURST_REDIS_FLOOR_VS_LITELLM,
        "x",
    )
    single = summary["added_ttft_single_ms"]
    mine = (single.get("parley") or {}).get("p50")
    litellm = (single.get("litellm") or {}).get("p50")
    bound = None if litellm is None else litellm * TTFT_SHARE_OF_LITELLM
    row(
        "added TTFT p50, one stream at a time",
        "≤ half of LiteLLM's" + ("" if bound is None else f" ({bound:.2f} ms)"),
        mine,
        None if mine is None or bound is None else mine <= bound,
        "ms",
    )
    at_100 = (summary["paced"].get(100) or {}).get("parley", {}).get("added_ttft_p99")
    row(
        "added TTFT p99, 100 paced streams",
        f"≤ {PACED_100_TTFT_P99_MS:g} ms",
        at_100,
        None if at_100 is None else at_100 <= PACED_100_TTFT_P99_MS,
        "ms",
    )
    memory, naive_memory = (summary["kib_per_stream"].get(p) for p in ("parley", "naive"))
    row(
        "memory per open stream",
        "≤ the naive relay's" + ("" if naive_memory is None else f" ({naive_memory:.1f} KiB)"),
        memory,
        None if memory is None or naive_memory is None else memory <= naive_memory,
        "KiB",
    )
    turns = _ratio(summary["turns_per_s"].get("parley"), summary["turns_per_s"].get("litellm"))
    row(
        "full turns/s vs LiteLLM",
        f"≥ {TURNS_FLOOR_VS_LITELLM:g}x",
        turns,
        None if turns is None else turns >= TURNS_FLOOR_VS_LITELLM,
        "x",
    )
    return rows


def _fmt(value: Any, digits: int = 1, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        text = f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.{digits}f}"
    else:
        text = f"{value:,}" if isinstance(value, int) else str(value)
    return f"{text}{unit}"


def markdown(results: dict[str, Any], summary: dict[str, Any]) -> str:
    machine = results["machine"]
    versions = results["versions"]
    peers = [p for p in ("direct", "naive", "litellm", "parley") if p in results["peers"]]
    available = [p for p in peers if results["peers"][p].get("available")]
    out: list[str] = []
    add = out.append
    add(f"# Benchmark results ({results['mode']} run, {results['started_at']})")
    add("")
    add(
        f"Machine: {machine['cores']} cores ({machine['cpu_model']}), {machine['memory_gib']} GiB, "
        f"Linux {machine['kernel']}, {machine['os']}, Python {machine['python']}; Postgres {results['postgres']}."
    )
    add(
        "Versions: "
        + ", ".join(
            f"{name} {version}" for name, version in versions.items() if name not in ("git_commit", "git_dirty")
        )
        + f"; LiteLLM {(results.get('litellm') or {}).get('version') or '-'}; "
        f"Parley at {versions.get('git_commit')}{' with uncommitted changes in app/' if versions.get('git_dirty') else ''}."
    )
    probe = results.get("postgres_probe")
    if probe:
        add(
            f"Postgres on this machine: a durable single-row commit takes {probe['commit_ms_p50']:.2f} ms (p50; "
            f"synchronous_commit={probe['synchronous_commit']}, fsync={probe['fsync']}), `SELECT 1` "
            f"{probe['select_1_ms_p50']:.2f} ms."
        )
    pinning = results["pinning"]
    add(
        f"Cores: server under test on CPU {pinning['server_under_test_cpus']}; simulator, load generator and harness "
        f"on CPU {pinning['simulator_cpus']}; Postgres {pinning['postgres']}"
        + (
            f"; Parley's replicas (its variants) on CPU {', '.join(map(str, pinning['replicas_cpus']))}, Redis not pinned"
            if pinning.get("replicas_cpus") and results.get("redis")
            else ""
        )
        + ". "
        f"Run took {_fmt(results.get('duration_s', 0) / 60, 1)} min."
    )
    add("")
    add("## Floors (Parley against the peers of this one run; see docs/benchmarks.md)")
    add("")
    add("| floor | goal | measured | met |")
    add("|---|---|---|---|")
    for row in summary["targets"]:
        met = {True: "yes", False: "**no**", None: "-"}[row["met"]]
        unit = row["unit"]
        value = _fmt(row["measured"], 2 if unit == "x" else 1)
        add(f"| {row['target']} | {row['goal']} | {value} {unit} | {met} |")
    add("")
    add("## Peers, same workload, same simulator")
    add("")
    add("| metric | " + " | ".join(PEER_LABELS[p] for p in peers) + " |")
    add("|---|" + "---|" * len(peers))

    def line(name: str, values: dict[str, Any], digits: int = 1, unit: str = "") -> None:
        add(f"| {name} | " + " | ".join(_fmt(values.get(p), digits, unit) for p in peers) + " |")

    line("(a) burst: relayed events/s (50 x 500 tokens, unpaced)", summary["burst_events_per_s"], 0)
    ratios = {
        p: _ratio(summary["burst_events_per_s"].get("parley"), summary["burst_events_per_s"].get(p)) for p in available
    }
    line("Parley's burst throughput ÷ this peer's", ratios, 2, "x")
    line("server CPU µs per relayed event (burst)", summary["server_us_per_event_burst"], 1)
    line(
        "added TTFT p50, one stream at a time (ms)",
        {p: (summary["added_ttft_single_ms"].get(p) or {}).get("p50") for p in available},
        2,
    )
    line(
        "added TTFT p99, one stream at a time (ms)",
        {p: (summary["added_ttft_single_ms"].get(p) or {}).get("p99") for p in available},
        2,
    )
    floors = {p: (_scenario(results, p, "ttft_single") or {}).get("direct_just_before") for p in available}
    line(
        "direct's own TTFT p50: its series / the one just before this peer's (ms); added is against the latter",
        {
            p: f"{_fmt(((_scenario(results, 'direct', 'ttft_single') or {}).get('ttft_ms') or {}).get('p50'), 2)}"
            f" / {_fmt(floor['ttft_ms'].get('p50'), 2)}"
            for p, floor in floors.items()
            if floor
        },
    )
    late_ttft = summary.get("added_ttft_single_late_ms") or {}
    if late_ttft.get("p50") is not None:
        line(
            "added TTFT p50 / p99, one stream at a time, measured last, rate limits off: the baseline of the next row",
            {"parley": f"{_fmt(late_ttft['p50'], 2)} / {_fmt(late_ttft.get('p99'), 2)}"},
        )
    limits_ttft = summary.get("added_ttft_single_limits_ms") or {}
    if limits_ttft.get("p50") is not None:
        line(
            "added TTFT p50 / p99, one stream at a time, rate limits counting (ms)",
            {"parley": f"{_fmt(limits_ttft['p50'], 2)} / {_fmt(limits_ttft.get('p99'), 2)}"},
        )
    for level, per_peer in summary["paced"].items():
        for metric, label in (
            ("added_ttft_p50", "added TTFT p50"),
            ("added_ttft_p99", "added TTFT p99"),
            ("added_gap_p50", "added inter-event gap p50"),
            ("added_gap_p99", "added inter-event gap p99"),
            ("added_delay_p99", "added delivery delay p99"),
        ):
            line(f"(b) {level} paced streams: {label} (ms)", {p: v.get(metric) for p, v in per_peer.items()}, 1)
        line(
            f"(b) {level} paced streams: delivery delay p99, own (ms)",
            {p: v.get("delay_p99") for p, v in per_peer.items()},
            1,
        )
        line(
            f"(b) {level} paced streams: share of scheduled events delivered (%)",
            {p: v["delivered"] * 100 for p, v in per_peer.items()},
            0,
        )
        line(
            f"(b) {level} paced streams: server CPU (share of its core)",
            {p: v.get("server_share") for p, v in per_peer.items()},
            2,
        )
    capacity = summary.get("capacity") or {}
    line("(c) paced streams per process under 50 ms p99 added lag", {"parley": capacity.get("streams")}, 0)
    if capacity.get("cpu_bound_streams"):
        line(
            "(c) paced streams at which Parley's CPU would reach 80% (from its least loaded paced run)",
            {"parley": capacity["cpu_bound_streams"]},
            0,
        )
    line("(d) full turns/s (32 sessions, 16-token answers)", summary["turns_per_s"], 0)
    one_user = _scenario(results, "parley", "turns_one_user")
    if one_user:
        line("(d') full turns/s, the 32 sessions all of one user", {"parley": one_user.get("turns_per_s")}, 0)
    line(
        "(d) server CPU per turn (ms)",
        {
            p: (
                t["cpu"]["server_s"] * 1000 / t["ok"]
                if t and t["ok"] and t["cpu"].get("server_s") is not None
                else None
            )
            for p in peers
            for t in [_scenario(results, p, "turns")]
        },
        2,
    )
    counted = _scenario(results, "parley", "turns_limits")
    if counted and counted.get("ok"):
        server_s = counted["cpu"].get("server_s")
        line(
            "(d) full turns/s and server CPU per turn (ms), rate limits counting",
            {
                "parley": f"{counted['turns_per_s']:.0f} / "
                + (f"{server_s * 1000 / counted['ok']:.2f}" if server_s is not None else "-")
            },
        )
    line("(e) memory per open stream (KiB)", summary["kib_per_stream"], 1)
    line(
        "(e) marginal memory per open stream, slope of RSS over open streams (KiB)",
        {p: ((_scenario(results, p, "memory") or {}).get("memory") or {}).get("kib_per_stream_slope") for p in peers},
        1,
    )
    add("")
    for peer in peers:
        for note in results["peers"][peer].get("notes", []):
            add(f"- {PEER_LABELS[peer]}: {note}")
        for name, why in results["peers"][peer].get("skipped", {}).items():
            add(f"- {PEER_LABELS[peer]}: {name} skipped ({why})")
        for name, why in results["peers"][peer].get("failures", {}).items():
            add(f"- {PEER_LABELS[peer]}: {name} failed: {why.splitlines()[0][:300]}")
    stuck = (results["peers"].get("parley") or {}).get("stuck_turns")
    if stuck:
        add(
            f"- Parley: {stuck} turns never left `in_progress` after the overload runs (their final write failed "
            "and was not spooled); their sessions answered 409 and were left out of later runs"
        )
    parley_turns = _scenario(results, "parley", "turns")
    if parley_turns and "rows_written" in parley_turns:
        rows = parley_turns["rows_written"]
        add(
            f"- Parley (d): {parley_turns['ok']} turns streamed; rows written meanwhile: "
            + ", ".join(f"{name} {count:+d}" for name, count in rows.items())
        )
    add_variants(results, summary, add)
    add("")
    add("## Paced streams in detail")
    add("")
    add(
        "Milliseconds. TTFT from opening the connection to the first `response.output_text.delta`; gap = time "
        "between consecutive deltas of a stream; delay = lateness behind the stream's own token schedule "
        "(see bench/stats.py). “added” = this peer's percentile minus direct's at the same level. Server CPU is "
        "the server process's own share of its core; server core busy is everything that ran on that core (the "
        "kernel's socket work for it, Postgres's backends): near 1.0 the server is short of CPU."
    )
    add("")
    add(
        "| streams | peer | ok / started | TTFT p50 | TTFT p99 | gap p50 | gap p99 | delay p50 | delay p99 "
        "| +TTFT p99 | +gap p99 | +delay p99 | server CPU | server core busy | server µs/event | driver core "
        "| other load |"
    )
    add("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for level in paced_levels(results):
        for peer in peers:
            result = _scenario(results, peer, f"paced_{level}")
            if result is None:
                continue
            cells = [
                str(level),
                PEER_LABELS[peer],
                f"{result['ok']} / {result['streams']}",
                _fmt(result["ttft_ms"].get("p50")),
                _fmt(result["ttft_ms"].get("p99")),
                _fmt(result["gap_ms"].get("p50")),
                _fmt(result["gap_ms"].get("p99")),
                _fmt(result["delay_ms"].get("p50")),
                _fmt(result["delay_ms"].get("p99")),
                _fmt(_added(results, peer, f"paced_{level}", "ttft_ms", "p99")),
                _fmt(_added(results, peer, f"paced_{level}", "gap_ms", "p99")),
                _fmt(_added(results, peer, f"paced_{level}", "delay_ms", "p99")),
                _fmt(result["cpu"].get("server_share"), 2),
                _fmt(result["cpu"].get("server_core_busy"), 2),
                _fmt(result["cpu"].get("server_us_per_event"), 0),
                _fmt(result["cpu"].get("driver_core_share"), 2),
                _fmt(result["cpu"].get("foreign_cores"), 2),
            ]
            add("| " + " | ".join(cells) + " |")
    if capacity:
        add("")
        add(f"## Capacity ladder (Parley; bound {capacity['bound_ms']:.0f} ms on p99 added gap and delay)")
        add("")
        limit = capacity.get("limit")
        if limit:
            add(f"Capacity: {capacity['streams']} streams; the ladder stopped at {limit['streams']}: {limit['why']}.")
            add("")
        add(
            "| streams | pass | +gap p99 | +delay p99 | events delivered | errors | Parley CPU | its core busy "
            "| direct delay p99 | direct delivered | rig-limited |"
        )
        add("|---|---|---|---|---|---|---|---|---|---|---|")
        for level in capacity["levels"]:
            add(
                f"| {level['streams']} | {'yes' if level['pass'] else 'no'} | {_fmt(level.get('added_gap_p99_ms'))} "
                f"| {_fmt(level.get('added_delay_p99_ms'))} | {_fmt((level.get('delivered') or 0) * 100, 0)}% "
                f"| {level.get('errors') or '-'} "
                f"| {_fmt(level.get('server_cpu_share'), 2)} | {_fmt(level.get('server_core_busy'), 2)} "
                f"| {_fmt(level.get('floor_delay_p99_ms'))} "
                f"| {_fmt((level.get('floor_delivered') or 0) * 100, 0)}% "
                f"| {'yes' if level.get('rig_limited') else 'no'} |"
            )
    add("")
    add("## Cost per stream against tokens per stream (unpaced, 16 at once)")
    add("")
    add("CPU of the server under test (its whole process tree) per completed stream, in ms.")
    add("")
    sweep_peers = [p for p in peers if _scenario(results, p, "sweep")]
    if sweep_peers:
        tokens = [point["tokens"] for point in (_scenario(results, sweep_peers[0], "sweep") or {})["points"]]
        add("| tokens per stream | " + " | ".join(PEER_LABELS[p] for p in sweep_peers) + " |")
        add("|---|" + "---|" * len(sweep_peers))
        for index, count in enumerate(tokens):
            cells = []
            for peer in sweep_peers:
                points = (_scenario(results, peer, "sweep") or {})["points"]
                cells.append(_fmt(points[index]["cpu_ms_per_stream"], 2) if index < len(points) else "-")
            add(f"| {count} | " + " | ".join(cells) + " |")
        add("")
        for peer in sweep_peers:
            fixed, per_token = cost_fit(results, peer)
            add(
                f"- {PEER_LABELS[peer]}: ≈ {_fmt(fixed, 2)} ms per stream + {_fmt(per_token * 1000 if per_token else None, 1)} µs "
                "per token (least squares over the sweep)"
            )
    disturbed = disturbed_runs(results)
    add("")
    add("## Other work on the machine")
    add("")
    add(
        "CPU used meanwhile by processes outside the benchmark (machine busy time from /proc/stat minus the "
        "server under test, the simulator, the load generator, the harness, Postgres and, in the rows that use it, "
        "Redis), in cores."
    )
    add("")
    for peer in peers:
        before = results["peers"][peer].get("machine_before")
        if before:
            add(
                f"- before {PEER_LABELS[peer]}: {before['busy_cores']:.2f} cores busy"
                f"{'' if before['quiet'] else ' (still busy after waiting ' + format(before['waited_s'], '.0f') + ' s)'}"
            )
    if disturbed:
        add("- runs with more than 0.25 cores of other work (their numbers are suspect): " + ", ".join(disturbed))
    else:
        add("- no run had more than 0.25 cores of other work")
    ceiling = results.get("loadgen_ceiling") or {}
    if "sse" in ceiling:
        add("")
        add("## Load generator ceiling")
        add("")
        direct_burst = _scenario(results, "direct", "burst") or {}
        direct_trivial = _scenario(results, "direct", "burst_trivial") or {}
        add(
            f"- Against a canned server replaying a recorded 500-token stream (on the server core): "
            f"{_fmt(ceiling['sse']['events_per_s'], 0)} events/s with the full SSE parser "
            f"(load generator at {_fmt(ceiling['sse']['loadgen_cpu_share'], 2)} of its core), "
            f"{_fmt(ceiling['trivial']['events_per_s'], 0)} events/s with a trivial consumer."
        )
        add(
            f"- Against the simulator (burst, 50 x 500 tokens): {_fmt(direct_burst.get('events_per_s'), 0)} events/s "
            f"parsed vs {_fmt(direct_trivial.get('events_per_s'), 0)} events/s with the trivial consumer; "
            f"load generator at {_fmt(direct_burst.get('loadgen_cpu_share'), 2)} of the shared core."
        )
    profiles = (_scenario(results, "parley", "profile") or {}) if "parley" in results["peers"] else {}
    if profiles:
        add("")
        add("## Where Parley's CPU goes (py-spy, share of its CPU samples)")
        for label, summary_ in profiles.items():
            add("")
            run = summary_.get("run", {})
            add(
                f"### {label}: {summary_['samples']} samples; Parley at {_fmt(run.get('server_share'), 2)} of its core, "
                f"{_fmt(run.get('server_us_per_event'), 1)} µs CPU per relayed event"
            )
            add("")
            add("| what Parley was doing (innermost marker on the stack) | share |")
            add("|---|---|")
            for phase in summary_.get("phases", []):
                add(f"| {phase['name']} | {phase['share'] * 100:.1f}% |")
            add("")
            add("| layer (innermost known frame) | share |")
            add("|---|---|")
            for layer in summary_["layers"]:
                add(f"| {layer['name']} | {layer['share'] * 100:.1f}% |")
            add("")
            add("| function (self time) | share |")
            add("|---|---|")
            for function in summary_["self"][:15]:
                add(f"| `{function['name']}` | {function['share'] * 100:.1f}% |")
    add("")
    return "\n".join(out)


def add_variants(results: dict[str, Any], summary: dict[str, Any], add: Callable[[str], None]) -> None:
    rows = summary.get("variants") or []
    if not rows:
        return
    add("")
    add("## Parley's variants: the event log on Redis, replicas, background responses")
    add("")
    add(
        "Parley restarted after the main rows (rate limits off, every database connection warmed first), one "
        "configuration at a time, in this order: the in-memory row is the baseline of the others (measured the "
        "same way, unlike the main rows' long-running process). Burst: 50 x 500-token unpaced streams; turns: "
        "the (d) scenario. CPU is Parley's own (every replica's together) and the machine's Redis's, per relayed "
        "event and per turn. The turn lease's heartbeat (one write every quarter of PARLEY_TURN_LEASE_S) is per "
        "process, not per turn: no row isolates it."
    )
    add("")
    add(
        "| Parley | burst events/s | ÷ LiteLLM | ÷ in-memory | Parley µs/event | Redis µs/event | full turns/s "
        "| ÷ in-memory | Parley CPU per turn (ms) | vs in-memory (ms) | Redis CPU per turn (ms) |"
    )
    add("|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        add(
            f"| {row['label']} | {_fmt(row['burst_events_per_s'], 0)} | {_fmt(row['burst_vs_litellm'], 2, 'x')} "
            f"| {_fmt(row['burst_vs_memory'], 2, 'x')} | {_fmt(row['server_us_per_event'], 1)} "
            f"| {_fmt(row['redis_us_per_event'], 1)} | {_fmt(row['turns_per_s'], 0)} "
            f"| {_fmt(row['turns_vs_memory'], 2, 'x')} | {_fmt(row['server_ms_per_turn'], 2)} "
            f"| {_signed(row['added_ms_per_turn'])} | {_fmt(row['redis_ms_per_turn'], 2)} |"
        )
    add("")
    replicas = next((row for row in rows if row["key"] == "replicas"), None)
    if replicas is not None:
        cpus = (results.get("pinning") or {}).get("replicas_cpus") or []
        driver = set((results.get("pinning") or {}).get("simulator_cpus") or [])
        placed = ", ".join(f"replica {n} on CPU {c}" for n, c in enumerate(cpus, 1))
        shared = sorted({core for c in cpus for core in c if core in driver})
        add(
            f"- Replicas: {placed}"
            + (
                f"; CPU {shared} is also the simulator's, the load generator's and the harness's, so the replicas "
                "row measures this machine's cores as much as Parley (it needs a core per replica and one for the "
                "rig)"
                if shared
                else "; each alone on its core"
            )
            + "."
            + (
                " Streams completed per replica: "
                + "; ".join(
                    f"{name} " + " / ".join(str(count) for count in counts)
                    for name, counts in replicas["ok_by_replica"].items()
                )
                + "."
                if replicas["ok_by_replica"]
                else ""
            )
            + (
                " Parley's CPU per replica (s): "
                + "; ".join(
                    f"{name} " + " / ".join(f"{seconds:.1f}" for seconds in values)
                    for name, values in replicas["cpu_s_by_replica"].items()
                )
                + "."
                if replicas["cpu_s_by_replica"]
                else ""
            )
        )
    redis = results.get("redis")
    if redis:
        flushed = redis.get("keys_flushed")
        add(
            f"- Redis {redis.get('version')}, database {redis.get('database')} of the run's own, flushed at the end"
            + ("." if flushed is None else f" ({flushed:,} keys: a stream per turn of the Redis rows, and the claim).")
        )


def _signed(value: float | None) -> str:
    return "-" if value is None else f"{value:+.2f}"


def disturbed_runs(results: dict[str, Any], threshold: float = 0.25) -> list[str]:
    found = []
    for peer, entry in results["peers"].items():
        for name, scenario in (entry.get("scenarios") or {}).items():
            if not isinstance(scenario, dict):
                continue
            loads = []
            if "cpu" in scenario:
                loads.append(scenario["cpu"].get("foreign_cores") or 0.0)
            for point in scenario.get("points", []):
                loads.append(point.get("foreign_cores") or 0.0)
            if loads and max(loads) > threshold:
                found.append(f"{PEER_LABELS.get(peer, peer)} {name} ({max(loads):.2f})")
    return found


def cost_fit(results: dict[str, Any], peer: str) -> tuple[float | None, float | None]:
    sweep = _scenario(results, peer, "sweep")
    if not sweep:
        return None, None
    points = [p for p in sweep["points"] if p["cpu_ms_per_stream"] is not None]
    if len(points) < 2:
        return None, None
    fixed, per_token = linear_fit([p["tokens"] for p in points], [p["cpu_ms_per_stream"] for p in points])
    return fixed, per_token


def plots(results: dict[str, Any], out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[Path] = []
    peers = [p for p in ("direct", "naive", "litellm", "parley") if (results["peers"].get(p) or {}).get("available")]
    colors = {"direct": "#777777", "naive": "#d62728", "litellm": "#ff7f0e", "parley": "#1f77b4"}
    bound = results["plan"]["lag_bound_ms"]

    figure, (left, middle, right) = plt.subplots(1, 3, figsize=(16, 4.8))
    tps = results["plan"]["paced_tps"]
    for peer in peers:
        levels, delays, gaps_, shares, delivered_ = [], [], [], [], []
        for level in paced_levels(results):
            result = _scenario(results, peer, f"paced_{level}")
            if result is None:
                continue
            levels.append(level)
            delays.append(result["delay_ms"].get("p99", math.nan))
            gaps_.append(result["gap_ms"].get("p99", math.nan))
            delivered_.append(delivered(result, level, tps) * 100)
            cpu = result["cpu"]
            shares.append(cpu["server_share"] if cpu["server_share"] is not None else cpu["simulator_share"])
        if not levels:
            continue
        label = PEER_LABELS[peer]
        left.plot(levels, delays, "o-", color=colors[peer], label=f"{label}: delivery delay p99")
        left.plot(levels, gaps_, "x--", color=colors[peer], alpha=0.6, label=f"{label}: inter-event gap p99")
        middle.plot(levels, delivered_, "o-", color=colors[peer], label=label)
        right.plot(levels, shares, "o-", color=colors[peer], label=label + (" (simulator)" if peer == "direct" else ""))
    xlabel = f"concurrent streams at {tps:.0f} tokens/s, 10 s each"
    left.axhline(1000 / tps + bound, color="black", linestyle=":", linewidth=1, label="token interval + 50 ms")
    left.set_xlabel(xlabel)
    left.set_ylabel("ms, log")
    left.set_yscale("log")
    left.set_title("p99 lag of token events (each peer's own)")
    left.legend(fontsize=6)
    left.grid(alpha=0.3)
    middle.axhline(95, color="black", linestyle=":", linewidth=1)
    middle.set_xlabel(xlabel)
    middle.set_ylabel("% of scheduled token events delivered")
    middle.set_title("Keeping up")
    middle.legend(fontsize=7)
    middle.grid(alpha=0.3)
    right.set_xlabel(xlabel)
    right.set_ylabel("CPU time / wall time (1.0 = one core)")
    right.set_title("CPU of the server under test")
    right.legend(fontsize=7)
    right.grid(alpha=0.3)
    figure.tight_layout()
    path = out_dir / "streams.png"
    figure.savefig(path, dpi=100)
    plt.close(figure)
    written.append(path)

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for peer in peers:
        sweep = _scenario(results, peer, "sweep")
        if not sweep:
            continue
        points = [p for p in sweep["points"] if p["cpu_ms_per_stream"]]
        axis.plot(
            [p["tokens"] for p in points],
            [p["cpu_ms_per_stream"] for p in points],
            "o-",
            color=colors[peer],
            label=PEER_LABELS[peer],
        )
        fixed, per_token = cost_fit(results, peer)
        if fixed is not None and per_token is not None and peer == "parley":
            per = f"{per_token * 1000:.1f} µs x tokens" if per_token > 0 else "a per-token cost lost in the noise"
            axis.annotate(
                f"Parley ≈ {fixed:.1f} ms + {per}",
                xy=(points[-1]["tokens"], points[-1]["cpu_ms_per_stream"]),
                xytext=(-260, 10),
                textcoords="offset points",
                fontsize=8,
                color=colors[peer],
            )
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlabel("output tokens per stream (unpaced, 16 streams at once)")
    axis.set_ylabel("server CPU per stream (ms, log)")
    axis.set_title("Cost per stream as tokens per stream grow")
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3, which="both")
    figure.tight_layout()
    path = out_dir / "tokens.png"
    figure.savefig(path, dpi=110)
    plt.close(figure)
    written.append(path)
    return written
