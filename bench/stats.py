"""Statistics for the harness: percentiles, and the lag of paced token events.

Two lag measures are taken from the arrival times of one stream's `response.output_text.delta` events
(seconds, the load generator's monotonic clock), and both are compared between a peer and the direct run:

- *inter-event gap*: the time between consecutive deltas of a stream. Relaying adds to it whenever an
  event is held back (the relay's event loop was busy) and the next one is not.
- *delivery delay*: how far each delta arrived behind its stream's own token schedule. Token k of a stream
  paced at r tokens/s is due k/r after the first; the stream's schedule is anchored at its best-aligned
  delta, so the delay is `(t_k - k/r) - min_j (t_j - j/r)`. Unlike the gap it keeps growing while a relay
  falls behind, so it catches a saturated relay that still sends evenly spaced bursts.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

QUANTILES = {"p50": 0.50, "p90": 0.90, "p99": 0.99, "p999": 0.999}


def percentile(values: Sequence[float], q: float, *, presorted: bool = False) -> float:
    """The q-quantile (0 ≤ q ≤ 1) with linear interpolation between order statistics (numpy's default)."""
    if not values:
        return math.nan
    ordered = values if presorted else sorted(values)
    position = (len(ordered) - 1) * q
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    fraction = position - low
    return ordered[low] + (ordered[high] - ordered[low]) * fraction


def summarize(values: Iterable[float], *, scale: float = 1.0) -> dict[str, float]:
    """n, mean, the usual percentiles and max; every value multiplied by `scale` (e.g. 1000 for ms)."""
    ordered = sorted(value * scale for value in values)
    if not ordered:
        return {"n": 0}
    summary: dict[str, float] = {"n": len(ordered), "mean": sum(ordered) / len(ordered)}
    for name, q in QUANTILES.items():
        summary[name] = percentile(ordered, q, presorted=True)
    summary["min"] = ordered[0]
    summary["max"] = ordered[-1]
    return summary


def gaps(arrivals: Sequence[float]) -> list[float]:
    """Times between consecutive events."""
    return [arrivals[i] - arrivals[i - 1] for i in range(1, len(arrivals))]


def delivery_delays(arrivals: Sequence[float], tokens_per_second: float) -> list[float]:
    """Each event's delay behind its stream's token schedule (see the module docstring); the first is
    the anchor's reference, so the smallest delay of a stream is 0."""
    if not arrivals or tokens_per_second <= 0:
        return []
    interval = 1.0 / tokens_per_second
    offsets = [arrival - index * interval for index, arrival in enumerate(arrivals)]
    anchor = min(offsets)
    return [offset - anchor for offset in offsets]


def added(peer: dict[str, float], floor: dict[str, float], key: str) -> float:
    """What a peer adds over the floor (direct) at one percentile, e.g. added(p, d, "p99")."""
    if key not in peer or key not in floor:
        return math.nan
    return peer[key] - floor[key]


def linear_fit(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least squares y = a + b·x; returns (a, b)."""
    n = len(xs)
    if n < 2:
        return (ys[0] if ys else math.nan, math.nan)
    mean_x = sum(xs) / n
    mean_y = sum(ys) / n
    sxx = sum((x - mean_x) ** 2 for x in xs)
    if sxx == 0:
        return mean_y, math.nan
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / sxx
    return mean_y - slope * mean_x, slope
