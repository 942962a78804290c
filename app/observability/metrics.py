"""Prometheus metrics of one Parley app, in a registry of its own (never the global default: the tests
run several apps in one process, and two apps must not share counters).

The runner records a turn once, when it ends, from what it counted on the way; nothing here runs per
relayed event. Labels stay few and bounded: status, model, stage, upstream status and error code, never a
user, session or turn id. Models and codes come from the upstream, so each label keeps at most
`MAX_LABEL_VALUES` distinct values and folds any further ones into "other".
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

logger = logging.getLogger(__name__)

MAX_LABEL_VALUES = 64
MAX_LABEL_LENGTH = 100
OTHER = "other"
UNKNOWN = "unknown"

# Reasoning models may think for a minute before their first token; the stall timeout is 180 s.
TTFT_BUCKETS_S = (0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 30.0, 60.0, 120.0)
# From the timer's own resolution (1 ms) to a loop that is seconds behind.
LOOP_LAG_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
DURATION_BUCKETS_S = (0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)

# Responses API usage: (metric label, group, field). cached_input is part of input, reasoning of output.
TOKEN_KINDS = (
    ("input", None, "input_tokens"),
    ("cached_input", "input_tokens_details", "cached_tokens"),
    ("output", None, "output_tokens"),
    ("reasoning", "output_tokens_details", "reasoning_tokens"),
)
RATE_LIMIT_HEADERS = {
    "x-ratelimit-remaining-requests": "requests",
    "x-ratelimit-remaining-tokens": "tokens",
}


class _BoundedLabel:
    """A label whose values come from outside: the first `limit` distinct values, then "other"."""

    def __init__(self, limit: int = MAX_LABEL_VALUES) -> None:
        self._limit = limit
        self._seen: set[str] = set()

    def __call__(self, value: object) -> str:
        text = str(value)[:MAX_LABEL_LENGTH] if value not in (None, "") else UNKNOWN
        if text in self._seen:
            return text
        if len(self._seen) >= self._limit:
            return OTHER
        self._seen.add(text)
        return text


class _SpoolDepthCollector:
    """The spool's depth, read when scraped (the spool is a file; nothing keeps a count of it)."""

    def __init__(self, depth: Callable[[], int]) -> None:
        self._depth = depth

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "parley_spool_depth", "Final turn writes waiting in the local spool for the database to come back."
        )

    def describe(self) -> Iterable[Metric]:
        return [self._family()]

    def collect(self) -> Iterable[Metric]:
        family = self._family()
        try:
            family.add_metric([], self._depth())
        except OSError:
            logger.warning("metrics.spool_unreadable")
            return []
        return [family]


class _EventLogCollector:
    """The in-memory event logs' bytes and evictions, read from the registry when scraped (the append path
    only adds to a plain integer)."""

    def __init__(self, usage: Callable[[], tuple[int, int]]) -> None:
        self._usage = usage

    def _families(self) -> tuple[GaugeMetricFamily, CounterMetricFamily]:
        return (
            GaugeMetricFamily(
                "parley_event_log_bytes",
                "Bytes this process's turn event logs hold in memory (frames and their overhead), running and "
                "finished; finished ones are evicted past PARLEY_RESUME_MAX_BYTES.",
            ),
            CounterMetricFamily(
                "parley_event_log_evictions",
                "Finished turns' event logs dropped before their resume window because the logs held more than "
                "PARLEY_RESUME_MAX_BYTES (a resume of one gets the stored turn's terminal event).",
            ),
        )

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self) -> Iterable[Metric]:
        held, evicted = self._usage()
        size, evictions = self._families()
        size.add_metric([], held)
        evictions.add_metric([], evicted)
        return [size, evictions]


class Metrics:
    def __init__(
        self,
        *,
        spool_depth: Callable[[], int] | None = None,
        event_log_usage: Callable[[], tuple[int, int]] | None = None,
        process: bool = True,
    ) -> None:
        # No `_created` series: in the text format Prometheus stores each as a gauge of its own, doubling
        # the series for nothing. (A process-wide switch of prometheus_client; Parley owns its process.)
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.turns = Counter("parley_turns", "Turns ended, by final status.", ["status"], registry=registry)
        self.time_to_first_token = Histogram(
            "parley_turn_time_to_first_token_seconds",
            "From the message arriving to the first answer token relayed.",
            buckets=TTFT_BUCKETS_S,
            registry=registry,
        )
        self.turn_duration = Histogram(
            "parley_turn_duration_seconds",
            "From the message arriving to the turn's end.",
            buckets=DURATION_BUCKETS_S,
            registry=registry,
        )
        self.open_streams = Gauge(
            "parley_open_streams", "Event streams (SSE responses) being sent to clients now.", registry=registry
        )
        self.relayed_events = Counter(
            "parley_relayed_events", "Upstream events relayed into turn event logs.", registry=registry
        )
        self.tokens = Counter(
            "parley_tokens",
            "Tokens the upstream reported, by model and kind (cached_input is part of input, reasoning of output).",
            ["model", "kind"],
            registry=registry,
        )
        self.cost = Counter(
            "parley_cost_usd", "Priced cost of turns in US dollars, by model.", ["model"], registry=registry
        )
        self.upstream_errors = Counter(
            "parley_upstream_errors",
            "Upstream failures: stage 'open' before the first byte (status: the upstream's HTTP status, or "
            "'none' when none came), stage 'stream' after it (stalled, cut, or a failed response).",
            ["stage", "status", "code"],
            registry=registry,
        )
        self.rate_limit_remaining = Gauge(
            "parley_upstream_ratelimit_remaining",
            "The latest x-ratelimit-remaining-* the upstream sent, by resource (requests, tokens).",
            ["resource"],
            registry=registry,
        )
        self.revocations_listening = Gauge(
            "parley_auth_revocations_listening",
            "1 while this replica hears API-key revokes as they are made (Postgres LISTEN) and trusts its key "
            "cache for PARLEY_AUTH_CACHE_NOTIFIED_TTL_S; 0 while it cannot (PARLEY_AUTH_CACHE_TTL_S then).",
            registry=registry,
        )
        self.loop_lag = Histogram(
            "parley_event_loop_lag_seconds",
            "How late the event loop woke a timer (ten a second): every request and turn start waits about as "
            "long at each step; tens of milliseconds mean the replica is near its capacity.",
            buckets=LOOP_LAG_BUCKETS_S,
            registry=registry,
        )
        self.redis_available = Gauge(
            "parley_redis_available",
            "1 while the turn event logs shared on Redis (PARLEY_REDIS_URL) answer; 0 after a Redis call failed or "
            "timed out, until one succeeds (turns go on and are stored; resumes of other replicas' turns get the "
            "stored turn), and without PARLEY_REDIS_URL.",
            registry=registry,
        )
        self.redis_errors = Counter(
            "parley_redis_errors",
            "Redis calls of the shared event log that failed or timed out, by operation: append (a batch of "
            "frames not written), read (a resume cut over to the stored turn); append_refused counts frames Redis "
            "refused (their ids already written).",
            ["op"],
            registry=registry,
        )
        self.resume_fallbacks = Counter(
            "parley_resume_fallbacks",
            "Resumes of a turn this process does not run that got the stored turn (its terminal event) instead of "
            "the shared event log, by reason: redis_error, missing (no stream: expired, or never written), gap "
            "(frames missing from it), stalled (the turn ended and its stream did not).",
            ["reason"],
            registry=registry,
        )
        self.turns_taken_over = Counter(
            "parley_turns_taken_over",
            "Turns this process took over from a process that stopped renewing its lease (died), and went on with "
            "from the upstream.",
            registry=registry,
        )
        if spool_depth is not None:
            registry.register(_SpoolDepthCollector(spool_depth))
        if event_log_usage is not None:
            registry.register(_EventLogCollector(event_log_usage))
        if process:
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)
        self._model = _BoundedLabel()
        self._code = _BoundedLabel()
        self._http_status = _BoundedLabel()

    # --- turns --------------------------------------------------------------------------------------

    def turn_finished(
        self,
        *,
        status: str,
        requested_model: str | None,
        ttft_ms: int | None,
        duration_ms: int | None,
        events: int,
        responses: Sequence[tuple[str | None, Mapping[str, Any] | None]],
        cost_usd: object,
    ) -> None:
        """One ended turn. `responses` is (model, usage) per upstream response, a missing model meaning the
        requested one (as in the ledger); `cost_usd` is the turn's priced cost from the ledger (a decimal
        string, None when unknown), counted under the model of its last response."""
        self.turns.labels(status=status).inc()
        if ttft_ms is not None:
            self.time_to_first_token.observe(max(ttft_ms, 0) / 1000)
        if duration_ms is not None:
            self.turn_duration.observe(max(duration_ms, 0) / 1000)
        if events > 0:
            self.relayed_events.inc(events)
        for model, usage in responses:
            if usage:
                self._count_tokens(self._model(model or requested_model), usage)
        cost = _dollars(cost_usd)
        if cost > 0:
            last_model = next((model for model, _ in reversed(responses) if model), None)
            self.cost.labels(model=self._model(last_model or requested_model)).inc(cost)

    def _count_tokens(self, model: str, usage: Mapping[str, Any]) -> None:
        for kind, group, name in TOKEN_KINDS:
            source = usage.get(group) if group else usage
            value = source.get(name) if isinstance(source, Mapping) else None
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                self.tokens.labels(model=model, kind=kind).inc(value)

    # --- upstream -----------------------------------------------------------------------------------

    def upstream_error(self, *, stage: str, status: int | None, code: str | None) -> None:
        self.upstream_errors.labels(
            stage=stage, status=self._http_status(status if status is not None else "none"), code=self._code(code)
        ).inc()

    def rate_limits(self, headers: Mapping[str, str] | None) -> None:
        """The latest remaining requests and tokens, from a response's x-ratelimit-* headers."""
        for header, resource in RATE_LIMIT_HEADERS.items():
            raw = (headers or {}).get(header)
            if raw is None:
                continue
            try:
                value = float(raw)
            except ValueError:
                continue
            self.rate_limit_remaining.labels(resource=resource).set(value)

    # --- streams ------------------------------------------------------------------------------------

    def stream_opened(self) -> None:
        self.open_streams.inc()

    def stream_closed(self) -> None:
        self.open_streams.dec()

    def resume_fallback(self, reason: str) -> None:
        self.resume_fallbacks.labels(reason=reason).inc()

    def turn_taken_over(self) -> None:
        self.turns_taken_over.inc()


def _dollars(value: object) -> float:
    if value is None:
        return 0.0
    try:
        return float(Decimal(str(value)))
    except (InvalidOperation, ValueError):
        return 0.0


def upstream_status_of(error: BaseException) -> int | None:
    """The upstream HTTP status behind a mapped error (`raise … from` the SDK's), if there was one."""
    status = getattr(error.__cause__, "status_code", None)
    return status if isinstance(status, int) else None
