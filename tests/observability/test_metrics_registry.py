"""The Metrics object on its own: its own registry, the spool read at scrape time, bounded labels."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from prometheus_client import generate_latest

from app.observability.loop_lag import LoopLagWatch
from app.observability.metrics import MAX_LABEL_VALUES, Metrics
from app.services.spool import Spool
from tests.observability.scrape import Scrape


def _scrape(metrics: Metrics) -> Scrape:
    return Scrape.parse(generate_latest(metrics.registry).decode())


async def test_the_spool_depth_is_read_when_scraped(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    metrics = Metrics(spool_depth=lambda: spool.depth, process=False)
    assert _scrape(metrics).value("parley_spool_depth") == 0
    await spool.append({"turn_id": "turn_a"})
    await spool.append({"turn_id": "turn_b"})
    assert _scrape(metrics).value("parley_spool_depth") == 2


def test_two_apps_never_share_a_counter() -> None:
    first, second = Metrics(process=False), Metrics(process=False)
    first.upstream_error(stage="open", status=500, code="server_error")
    assert _scrape(first).value("parley_upstream_errors_total", stage="open", status="500") == 1
    assert _scrape(second).value("parley_upstream_errors_total") == 0


def test_a_turn_is_recorded_once_with_its_tokens_and_cost() -> None:
    metrics = Metrics(process=False)
    usage = {
        "input_tokens": 10,
        "input_tokens_details": {"cached_tokens": 4},
        "output_tokens": 7,
        "output_tokens_details": {"reasoning_tokens": 3},
        "total_tokens": 17,
    }
    metrics.turn_finished(
        status="completed",
        requested_model="gpt-5-mini",
        ttft_ms=250,
        duration_ms=1500,
        events=12,
        responses=[("gpt-5-mini-2025-08-07", usage), (None, usage)],
        cost_usd="0.00012500",
    )
    scraped = _scrape(metrics)
    assert scraped.value("parley_turns_total", status="completed") == 1
    assert scraped.value("parley_relayed_events_total") == 12
    assert scraped.value("parley_turn_time_to_first_token_seconds_sum") == 0.25
    assert scraped.value("parley_turn_duration_seconds_sum") == 1.5
    assert scraped.value("parley_tokens_total", model="gpt-5-mini-2025-08-07", kind="input") == 10
    assert scraped.value("parley_tokens_total", model="gpt-5-mini-2025-08-07", kind="cached_input") == 4
    assert scraped.value("parley_tokens_total", model="gpt-5-mini-2025-08-07", kind="reasoning") == 3
    # A response without a model is counted under the requested one, as in the ledger.
    assert scraped.value("parley_tokens_total", model="gpt-5-mini", kind="output") == 7
    assert scraped.value("parley_cost_usd_total", model="gpt-5-mini-2025-08-07") == 0.000125
    assert not any(name.endswith("_created") for name in scraped.names())


def test_labels_from_the_upstream_stay_bounded() -> None:
    metrics = Metrics(process=False)
    for index in range(MAX_LABEL_VALUES + 20):
        metrics.upstream_error(stage="open", status=400, code=f"code_{index}")
    codes = {labels["code"] for labels in _scrape(metrics).labels_of("parley_upstream_errors_total")}
    assert len(codes) == MAX_LABEL_VALUES + 1
    assert "other" in codes
    assert _scrape(metrics).value("parley_upstream_errors_total", code="other") == 20


def test_rate_limit_gauges_keep_the_latest_values() -> None:
    metrics = Metrics(process=False)
    metrics.rate_limits({"x-ratelimit-remaining-requests": "10", "x-ratelimit-remaining-tokens": "5000"})
    metrics.rate_limits({"x-ratelimit-remaining-requests": "9", "x-ratelimit-remaining-tokens": "not-a-number"})
    metrics.rate_limits(None)
    scraped = _scrape(metrics)
    assert scraped.value("parley_upstream_ratelimit_remaining", resource="requests") == 9
    assert scraped.value("parley_upstream_ratelimit_remaining", resource="tokens") == 5000


async def test_a_stalled_event_loop_shows_in_the_loop_lag() -> None:
    metrics = Metrics(process=False)
    watch = LoopLagWatch(metrics, interval_s=0.01)
    watch.start()
    try:
        await asyncio.sleep(0.1)  # on time: the wake-ups so far came within a few milliseconds
        on_time = _scrape(metrics).value("parley_event_loop_lag_seconds_bucket", le="0.025")
        time.sleep(0.3)
        await asyncio.sleep(0.05)
    finally:
        await watch.stop()
    scraped = _scrape(metrics)
    assert on_time >= 3
    assert scraped.value("parley_event_loop_lag_seconds_bucket", le="0.1") < scraped.value(
        "parley_event_loop_lag_seconds_count"
    )  # one wake-up came more than 0.1 s late
    assert scraped.value("parley_event_loop_lag_seconds_sum") >= 0.25
