"""The TTFT phase probe's table (bench/ttft_phases.py): medians between consecutive phases of each turn."""

from __future__ import annotations

import pytest

from bench.ttft_phases import phase_table


def test_phases_are_split_by_turn_and_a_turn_without_a_first_chunk_is_left_out() -> None:
    marks = [
        ("request_begins", 10.000),
        ("start_turn>", 10.001),
        ("statement>", 10.0012),
        ("statement<", 10.0018),
        ("first_upstream_chunk", 10.003),
        ("first_upstream_chunk", 10.004),  # later chunks of the same turn do not count
        ("request_begins", 20.000),  # a request that never streamed (creating a session)
        ("request_begins", 30.000),
        ("start_turn>", 30.003),
        ("first_upstream_chunk", 30.005),
    ]
    table = {name: (count, median) for name, count, median in phase_table(marks)}
    assert table["request_begins → start_turn>"] == (2, pytest.approx(2.0))
    assert table["statement> → statement<"] == (1, pytest.approx(0.6))
    # A phase missing from a turn: the gap is taken from the phase before it that the turn has.
    assert table["start_turn> → first_upstream_chunk"] == (1, pytest.approx(2.0))
    assert table["inside the server: request_begins → first_upstream_chunk"] == (2, pytest.approx(4.0))
