"""The TTFT phase probe's table (bench/ttft_phases.py): medians between consecutive phases of each turn."""

from __future__ import annotations

import pytest

from bench.ttft_phases import phase_table


def test_phases_are_split_by_turn_and_a_turn_without_a_first_chunk_is_left_out() -> None:
    marks: list[tuple[str, float, int | None]] = [
        ("request_begins", 10.000, 1),
        ("start_turn>", 10.001, 1),
        ("statement>", 10.0012, 1),
        ("statement<", 10.0018, 1),
        ("first_upstream_chunk", 10.003, 1),
        ("first_upstream_chunk", 10.004, 1),  # later chunks of the same turn do not count
        ("request_begins", 20.000, 2),  # a request that never streamed (creating a session)
        ("request_begins", 30.000, 1),
        ("start_turn>", 30.003, 1),
        ("first_upstream_chunk", 30.005, 1),
    ]
    table = {name: (count, median) for name, count, median in phase_table(marks)}
    assert table["request_begins → start_turn>"] == (2, pytest.approx(2.0))
    assert table["statement> → statement<"] == (1, pytest.approx(0.6))
    # A phase missing from a turn: the gap is taken from the phase before it that the turn has.
    assert table["start_turn> → first_upstream_chunk"] == (1, pytest.approx(2.0))
    assert table["inside the server: request_begins → first_upstream_chunk"] == (2, pytest.approx(4.0))


def test_overlapping_turns_are_told_apart_by_their_key() -> None:
    marks: list[tuple[str, float, int | None]] = [
        ("request_begins", 1.000, 5001),
        ("request_begins", 1.001, 5002),
        ("statement>", 1.002, 5002),
        ("statement>", 1.004, 5001),
        ("first_upstream_chunk", 1.003, 5002),
        ("first_upstream_chunk", 1.010, 5001),
    ]
    table = {name: (count, median) for name, count, median in phase_table(marks)}
    assert table["request_begins → statement>"] == (2, pytest.approx(2.5))
    assert table["inside the server: request_begins → first_upstream_chunk"] == (2, pytest.approx(6.0))
