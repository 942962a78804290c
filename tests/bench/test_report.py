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
    }
    return {**base, **overrides}


def floors(values: dict[str, Any]) -> dict[str, bool | None]:
    return {row["target"]: row["met"] for row in report.targets(values)}


def test_the_floors_are_relative_to_the_peers_of_the_same_run() -> None:
    assert floors(summary()) == {
        "burst throughput vs LiteLLM": True,
        "burst throughput vs naive relay": True,
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
    assert len(built["targets"]) == 6
