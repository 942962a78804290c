"""The report's floors (docs/benchmarks.md) and the report built from a landed full run's raw results."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench import report

LANDED = Path(__file__).resolve().parents[2] / "docs" / "benchmarks" / "results.json"


def summary(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "burst_ratio": {"direct": 0.4, "naive": 12.0, "litellm": 23.0},
        "added_ttft_single_ms": {"parley": {"p50": 8.0}, "litellm": {"p50": 24.0}},
        "paced": {100: {"parley": {"added_ttft_p99": 22.0}}},
        "kib_per_stream": {"parley": 51.0, "naive": 87.0},
        "turns_per_s": {"parley": 128.0, "litellm": 20.0},
        "burst_redis_ratio": {"direct": 0.3, "naive": 9.0, "litellm": 17.0},
    }
    return {**base, **overrides}


def floors(values: dict[str, Any]) -> dict[str, bool | None]:
    return {row["target"]: row["met"] for row in report.targets(values)}


def test_the_floors_are_relative_to_the_peers_of_the_same_run() -> None:
    assert floors(summary()) == {
        "burst throughput vs LiteLLM": True,
        "burst throughput vs naive relay": True,
        "burst throughput with the Redis log vs LiteLLM": True,
        "added TTFT p50, one stream at a time": True,
        "added TTFT p99, 100 paced streams": True,
        "memory per open stream": True,
        "full turns/s vs LiteLLM": True,
    }
    missed = floors(
        summary(
            burst_ratio={"naive": 4.9, "litellm": 9.9},
            added_ttft_single_ms={"parley": {"p50": 12.5}, "litellm": {"p50": 24.0}},
            paced={100: {"parley": {"added_ttft_p99": 50.1}}},
            kib_per_stream={"parley": 88.0, "naive": 87.0},
            turns_per_s={"parley": 79.0, "litellm": 20.0},
            burst_redis_ratio={"litellm": 9.9},
        )
    )
    assert set(missed.values()) == {False}


def test_a_floor_whose_peer_did_not_run_is_not_judged() -> None:
    # The quick run: direct and Parley only.
    quick = floors(
        summary(
            burst_ratio={"direct": 0.4},
            added_ttft_single_ms={"parley": {"p50": 8.0}},
            kib_per_stream={"parley": 51.0},
            turns_per_s={"parley": 128.0},
            burst_redis_ratio={"direct": 0.3},
        )
    )
    assert quick.pop("added TTFT p99, 100 paced streams") is True
    assert set(quick.values()) == {None}


@pytest.mark.skipif(not LANDED.exists(), reason="no landed full run")
def test_the_report_builds_from_the_landed_full_run(tmp_path: Path) -> None:
    results = json.loads(LANDED.read_text())
    results.pop("summary", None)
    built = report.summarize(results)
    text = report.markdown(results, built)
    assert "## Floors" in text
    assert "## Capacity ladder" in text
    assert len(built["targets"]) == 7
    # A run without the Redis rows lists the floor without judging it and has no variants table; one with them
    # judges it and has the table.
    has_redis = "burst_redis" in results["peers"]["parley"]["scenarios"]
    assert (floors(built)["burst throughput with the Redis log vs LiteLLM"] is None) is not has_redis
    assert ("## Parley's variants" in text) is has_redis


def measured(events_per_s: float, *, server_s: float, done: int = 0, redis_s: float | None = None) -> dict[str, Any]:
    """A load run's result, as much of it as the report reads."""
    cpu = {"server_s": server_s, "redis_s": redis_s, "server_processes": 1}
    return {"events_per_s": events_per_s, "events": int(events_per_s * 10), "ok": done, "cpu": cpu}


@pytest.mark.skipif(not LANDED.exists(), reason="no landed full run")
def test_a_run_with_the_variants_judges_the_redis_floor_and_reports_each_against_the_in_memory_row() -> None:
    results = json.loads(LANDED.read_text())
    results.pop("summary", None)
    # Only the variants made up below: the landed run may have measured its own.
    scenarios = results["peers"]["parley"]["scenarios"]
    for name in [n for n in scenarios if n.endswith(("_redis", "_replicas", "_no_background", "_late"))]:
        del scenarios[name]
    litellm = results["peers"]["litellm"]["scenarios"]["burst"]["events_per_s"]
    replicas = measured(3 * litellm, server_s=20.0, done=1000)
    replicas["cpu"]["server_processes"] = 2
    replicas["ok_by_port"] = {"9000": 480, "9500": 500}
    replicas["replica_ports"] = [9500, 9000]
    replicas["cpu"]["server_s_by_process"] = [9.0, 11.0]
    results["peers"]["parley"]["scenarios"].update(
        {
            "burst_late": measured(20 * litellm, server_s=10.0),
            "turns_late": {**measured(0.0, server_s=5.0, done=1000), "turns_per_s": 200.0},
            "burst_redis": measured(9 * litellm, server_s=10.0, redis_s=1.0),
            "turns_redis": {**measured(0.0, server_s=5.5, done=1000, redis_s=0.2), "turns_per_s": 190.0},
            "burst_replicas": replicas,
            "turns_no_background": {**measured(0.0, server_s=4.0, done=1000), "turns_per_s": 210.0},
        }
    )
    results["pinning"]["replicas_cpus"] = [[1], [0]]
    built = report.summarize(results)
    assert floors(built)["burst throughput with the Redis log vs LiteLLM"] is False
    rows = {row["key"]: row for row in built["variants"]}
    assert list(rows) == ["memory", "redis", "replicas", "no_background", "limits"]
    assert rows["redis"]["burst_vs_litellm"] == pytest.approx(9.0)
    assert rows["redis"]["burst_vs_memory"] == pytest.approx(0.45)
    assert rows["redis"]["redis_us_per_event"] == pytest.approx(1e6 / (90 * litellm), rel=0.01)
    assert rows["no_background"]["added_ms_per_turn"] == pytest.approx(-1.0)
    assert rows["replicas"]["label"] == "2 replicas, event log on Redis"
    text = report.markdown(results, built)
    assert "## Parley's variants" in text
    assert "| background responses off | - | - | - |" in text
    # Two cores: the second replica shares the rig's core, and the report says so.
    assert "replica 2 on CPU [0]; CPU [0] is also the simulator's" in text
    assert "Streams completed per replica: burst 500 / 480." in text
    assert "Parley's CPU per replica (s): burst 9.0 / 11.0." in text
