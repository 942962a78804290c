"""The event log registry keeps closed turns' logs for the resume window in a compact form: what a resuming
client reads from it is byte for byte what it would have read live, and the kept logs cost the garbage
collector nothing to walk (its full collections pause every open stream)."""

from __future__ import annotations

import asyncio
import gc

from app.streaming.event_log import EventLog, EventLogRegistry

NAMES = ("turn.created", "response.output_text.delta", "response.completed")


def _fill(log: EventLog, count: int) -> None:
    for index in range(count):
        log.append(NAMES[index % len(NAMES)], b'{"delta":"token %d \\u00e9"}' % index)


def _read_all(log: EventLog, after: int) -> bytes:
    return log.reader(after).take() or b""


def test_a_kept_log_replays_the_same_bytes_from_every_point() -> None:
    logs = EventLogRegistry(retention_s=60)
    live = logs.create("turn_a")
    _fill(live, 40)
    live.close()
    expected = {after: _read_all(live, after) for after in range(0, 42)}

    assert logs.expire(now=live.closed_at) == 0  # compacted, not dropped
    restored = logs.get("turn_a")
    assert restored is not None
    assert restored is not live
    assert restored.closed
    assert len(restored) == 40
    assert {after: _read_all(restored, after) for after in range(0, 42)} == expected
    assert restored.reader(40).finished


def test_kept_logs_add_nothing_for_the_collector_to_walk() -> None:
    logs = EventLogRegistry(retention_s=60)
    gc.collect()
    before = len(gc.get_objects())
    for index in range(2_000):
        log = logs.create(f"turn_{index}")
        _fill(log, 10)
        log.close()
    del log
    logs.expire()
    gc.collect()
    # As objects each log would be three (the log, its frames, its waiters): 6,000 here; a kept log the
    # collector still tracked, one or two (2,000-4,000). The margin is for other tests' servers, whose threads
    # go on making objects meanwhile in a full run.
    assert len(gc.get_objects()) - before < 1_000
    assert len(logs) == 2_000
    last = logs.get("turn_1999")
    assert last is not None
    assert _read_all(last, 9).startswith(b"id: 10\n")


def test_a_turn_going_on_after_its_log_was_kept_continues_its_ids() -> None:
    logs = EventLogRegistry(retention_s=60)
    first = logs.create("turn_t")
    _fill(first, 5)
    first.close()  # turn.requires_action: waits for the client's tool outputs
    logs.expire()

    log = logs.get("turn_t")
    assert log is not None
    assert len(log) == 5
    log.reopen()
    assert log.append("response.output_text.delta", b"{}") == 6
    log.close()
    logs.expire()

    whole = logs.get("turn_t")
    assert whole is not None
    ids = [line for line in _read_all(whole, 0).split(b"\n") if line.startswith(b"id: ")]
    assert ids == [b"id: %d" % n for n in range(1, 7)]


def test_kept_logs_leave_after_the_window_and_not_before() -> None:
    logs = EventLogRegistry(retention_s=10)
    old = logs.create("turn_old")
    old.close()
    assert old.closed_at is not None
    old.closed_at -= 5  # closed five seconds before the other one
    logs.expire(now=old.closed_at)
    new = logs.create("turn_new")
    new.close()
    assert new.closed_at is not None
    logs.expire(now=new.closed_at)

    assert logs.expire(now=old.closed_at + 9.9) == 0
    assert logs.expire(now=old.closed_at + 10.1) == 1
    assert logs.get("turn_old") is None
    assert logs.get("turn_new") is not None  # read once: goes back, and still leaves with its window
    assert logs.expire(now=new.closed_at + 10.1) == 1
    assert logs.get("turn_new") is None
    assert len(logs) == 0


async def test_the_sweep_gives_the_event_loop_back_while_it_compacts_and_leaves_a_reopened_log_alone() -> None:
    """Compacting costs what the logs weigh; thousands at once were a stall of every stream in the process.
    Between slices other work runs, and a turn that goes on meanwhile keeps its live log."""
    logs = EventLogRegistry(retention_s=60)
    for index in range(300):
        log = logs.create(f"turn_{index}")
        _fill(log, 20)
        log.close()
    expected = _read_all(log, 0)
    going_on = logs.get("turn_299")
    assert going_on is not None
    ticks = 0

    async def other_streams() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            if ticks == 2:
                going_on.reopen()  # its tool outputs arrived while the sweep was under way
            await asyncio.sleep(0)

    beside = asyncio.create_task(other_streams())
    try:
        assert await logs.expire_in_slices(slice_s=0.0) == 0
    finally:
        beside.cancel()
    assert ticks > 100  # one slice per log here: the other task ran between them
    assert logs.get("turn_299") is going_on  # live, not compacted under the turn that goes on
    assert going_on.append("response.output_text.delta", b"{}") == 21
    restored = logs.get("turn_0")
    assert restored is not None
    assert restored.closed
    assert _read_all(restored, 0) == expected
