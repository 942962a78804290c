"""The load generator's parsers and the harness's statistics (bench/ itself is not part of the suite)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from bench import report
from bench.sse import HTTPError, HTTPResponseParser, SSEParser, parse_block
from bench.stats import delivery_delays, gaps, linear_fit, percentile, summarize

STREAM = (
    b'event: response.created\ndata: {"type":"response.created"}\n\n'
    b'id: 2\nevent: response.output_text.delta\ndata: {"delta":"Hi"}\n\n'
    b": ping\n\n"
    b'data: {"type":"response.completed","response":{}}\n\n'
)
EXPECTED = [
    ("response.created", b'{"type":"response.created"}'),
    ("response.output_text.delta", b'{"delta":"Hi"}'),
    ("response.completed", b'{"type":"response.completed","response":{}}'),
]


def feed_in_pieces(data: bytes, size: int, *, rest: bytes = b"") -> list[tuple[str, bytes]]:
    parser = SSEParser()
    events = []
    for start in range(0, len(data), size):
        events.extend(parser.feed(data[start : start + size]))
    assert parser.pending == rest
    return events


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, 10_000])
def test_sse_events_survive_any_split(size: int) -> None:
    assert feed_in_pieces(STREAM, size) == EXPECTED


@pytest.mark.parametrize("size", [1, 5, 10_000])
def test_sse_crlf_and_cr_line_ends(size: int) -> None:
    assert feed_in_pieces(STREAM.replace(b"\n", b"\r\n"), size) == EXPECTED
    # A CR at the very end may be half of a CRLF, so a CR-only stream's last event needs one more byte.
    assert feed_in_pieces(STREAM.replace(b"\n", b"\r") + b":", size, rest=b":") == EXPECTED


def test_sse_multiline_data_comments_and_unnamed_events() -> None:
    assert parse_block(b"event: x\ndata: a\ndata: b") == ("x", b"a\nb")
    assert parse_block(b": just a comment") is None
    assert parse_block(b"event: only-a-name") is None
    assert parse_block(b"data: [DONE]") == ("[DONE]", b"[DONE]")
    assert parse_block(b"data: not json") == ("message", b"not json")
    assert parse_block(b'data: {"a":1,"type":"late.type"}') == ("late.type", b'{"a":1,"type":"late.type"}')
    assert parse_block(b"retry: 2000\nid: 1\nevent: turn.created\ndata: {}") == ("turn.created", b"{}")


def chunked(body: bytes, size: int) -> bytes:
    parts = [b"%x\r\n%s\r\n" % (len(body[i : i + size]), body[i : i + size]) for i in range(0, len(body), size)]
    return b"".join(parts) + b"0\r\n\r\n"


@pytest.mark.parametrize("read", [1, 3, 17, 100_000])
def test_http_chunked_body_split_anywhere(read: int) -> None:
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    raw = head + chunked(STREAM, 13)
    http = HTTPResponseParser()
    body = b"".join(piece for start in range(0, len(raw), read) for piece in http.feed(raw[start : start + read]))
    assert http.status == 200
    assert http.headers["content-type"] == "text/event-stream"
    assert http.done
    assert body == STREAM


def test_http_content_length_and_close_delimited() -> None:
    http = HTTPResponseParser()
    assert http.feed(b"HTTP/1.1 409 Conflict\r\nContent-Length: 4\r\n\r\nbody and more") == [b"body"]
    assert http.done
    assert http.status == 409
    close = HTTPResponseParser()
    assert close.feed(b"HTTP/1.1 200 OK\r\n\r\nabc") == [b"abc"]
    assert not close.done
    close.eof()
    assert close.done


def test_http_cut_mid_body_is_an_error() -> None:
    http = HTTPResponseParser()
    http.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab")
    with pytest.raises(HTTPError):
        http.eof()


def test_percentiles_interpolate_like_numpy() -> None:
    values = [float(v) for v in range(1, 11)]
    assert percentile(values, 0.5) == 5.5
    assert percentile(values, 0.99) == pytest.approx(9.91)
    assert percentile([3.0], 0.99) == 3.0
    assert math.isnan(percentile([], 0.5))
    summary = summarize([0.001, 0.002, 0.003], scale=1000)
    assert summary["n"] == 3
    assert summary["p50"] == pytest.approx(2.0)
    assert summary["max"] == pytest.approx(3.0)
    assert summarize([]) == {"n": 0}


def test_gaps_and_delivery_delay_against_the_token_schedule() -> None:
    # 10 tokens/s: due every 100 ms. The third arrives 30 ms late and the fourth catches up.
    arrivals = [1.000, 1.100, 1.230, 1.300]
    assert gaps(arrivals) == pytest.approx([0.1, 0.13, 0.07])
    assert delivery_delays(arrivals, 10.0) == pytest.approx([0.0, 0.0, 0.03, 0.0])
    # An early first delta must not make every later one look late: the anchor is the best-aligned one.
    assert delivery_delays([1.000, 1.050, 1.150], 10.0) == pytest.approx([0.05, 0.0, 0.0])
    assert delivery_delays(arrivals, 0.0) == []


def test_linear_fit() -> None:
    fixed, slope = linear_fit([16, 64, 256], [2 + 0.5 * 16, 2 + 0.5 * 64, 2 + 0.5 * 256])
    assert fixed == pytest.approx(2.0)
    assert slope == pytest.approx(0.5)


def test_added_ttft_is_against_the_floor_measured_just_before_the_series() -> None:
    # Direct's own series ran minutes earlier; a peer's one-stream TTFT is compared with the direct series
    # run right before it, where there is one.
    def series(p50: float, p99: float) -> dict[str, dict[str, float]]:
        return {"ttft_ms": {"p50": p50, "p99": p99}}

    results = {
        "peers": {
            "direct": {"available": True, "scenarios": {"ttft_single": series(1.0, 2.0)}},
            "parley": {
                "available": True,
                "scenarios": {"ttft_single": {**series(6.0, 9.0), "direct_just_before": series(2.5, 4.0)}},
            },
            "naive": {"available": True, "scenarios": {"ttft_single": series(4.0, 5.0)}},
        }
    }
    assert report._added(results, "parley", "ttft_single", "ttft_ms", "p50") == 3.5
    assert report._added(results, "parley", "ttft_single", "ttft_ms", "p99") == 5.0
    assert report._added(results, "naive", "ttft_single", "ttft_ms", "p50") == 3.0


def test_a_level_where_direct_itself_lagged_past_the_bound_measures_the_rig() -> None:
    # Direct stalled (p99 delay 386 ms): a relay 307 ms late would otherwise pass on "added" delay (-79 ms).
    def paced(delay_p99: float, gap_p99: float = 40.0) -> dict[str, Any]:
        return {
            "gap_ms": {"p99": gap_p99},
            "delay_ms": {"p99": delay_p99},
            "errors": 0,
            "timed_out": 0,
            "events_per_s": 30 * 500,
            "cpu": {"server_share": 0.7},
        }

    lagging_floor = report.paced_verdict(500, paced(307.0), paced(386.0), tokens_per_second=30, bound_ms=50)
    assert lagging_floor["rig_limited"]
    assert not lagging_floor["pass"]
    steady_floor = report.paced_verdict(500, paced(30.0), paced(12.0), tokens_per_second=30, bound_ms=50)
    assert steady_floor["pass"]
    assert not steady_floor["rig_limited"]
    late_relay = report.paced_verdict(500, paced(80.0), paced(12.0), tokens_per_second=30, bound_ms=50)
    assert not late_relay["pass"]
    assert not late_relay["rig_limited"]
