"""The event log as its readers see it: every frame after the point a reader asks for, exactly once and in
order, the live ones as they come, the end when the log closes; ids that go on when a turn does; closed logs
kept for the resume window and not after."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

from app.streaming.event_log import EventLog, EventLogRegistry
from app.streaming.frames import PING

NAMES = ("turn.created", "response.output_text.delta", "response.completed")


def _fill(log: EventLog, count: int) -> None:
    for _ in range(count):
        index = len(log)
        log.append(NAMES[index % len(NAMES)], b'{"delta":"token %d \\u00e9"}' % index)


async def _read_to_end(frames: AsyncGenerator[bytes, None]) -> bytes:
    return b"".join([chunk async for chunk in frames])


def _ids(stream: bytes) -> list[int]:
    return [int(line[4:]) for line in stream.split(b"\n") if line.startswith(b"id: ")]


async def test_a_closed_log_replays_every_event_after_any_point_exactly_once() -> None:
    log = EventLog("turn_a")
    _fill(log, 40)
    log.close()
    whole = await _read_to_end(log.read(0))
    assert _ids(whole) == list(range(1, 41))
    assert whole.startswith(b"retry: 2000\nid: 1\n")
    for after in (1, 17, 39):
        rest = await _read_to_end(log.read(after))
        assert _ids(rest) == list(range(after + 1, 41))
        assert whole.endswith(rest)
    assert await _read_to_end(log.read(40)) == b""


async def test_a_reader_gets_live_events_as_they_come_and_ends_when_the_log_closes() -> None:
    log = EventLog("turn_live")
    _fill(log, 2)
    reader = log.read(0)
    assert _ids(await anext(reader)) == [1, 2]
    waiting = asyncio.ensure_future(anext(reader))
    await asyncio.sleep(0.01)
    assert not waiting.done()  # nothing new: the reader waits
    _fill(log, 1)
    assert _ids(await asyncio.wait_for(waiting, 1)) == [3]
    log.close()
    assert await _read_to_end(reader) == b""


async def test_a_reader_that_is_level_with_a_live_log_hears_a_ping_at_once() -> None:
    log = EventLog("turn_quiet")
    _fill(log, 3)
    reader = log.read(3)
    assert await asyncio.wait_for(anext(reader), 1) == PING
    await reader.aclose()


async def test_a_cancelled_reader_does_not_disturb_the_others() -> None:
    log = EventLog("turn_two")
    first, second = log.read(0), log.read(0)
    assert await anext(first) == PING
    assert await anext(second) == PING
    gone = asyncio.ensure_future(anext(first))
    staying = asyncio.ensure_future(anext(second))
    await asyncio.sleep(0.01)
    gone.cancel()
    await asyncio.sleep(0.01)
    _fill(log, 1)
    assert _ids(await asyncio.wait_for(staying, 1)) == [1]


async def test_a_turn_going_on_after_requires_action_continues_its_ids() -> None:
    logs = EventLogRegistry(retention_s=60)
    log = logs.create("turn_t")
    _fill(log, 5)
    log.close()  # turn.requires_action: waits for the client's tool outputs
    again = logs.get("turn_t")
    assert again is log
    log.reopen()
    assert log.append("response.output_text.delta", b"{}") == 6
    log.close()
    assert _ids(await _read_to_end(log.read(0))) == list(range(1, 7))
    # In another process, the log starts after the ids the first one sent.
    elsewhere = EventLogRegistry(retention_s=60).create("turn_t", base=5)
    elsewhere.append("response.output_text.delta", b"{}")
    elsewhere.close()
    assert _ids(await _read_to_end(elsewhere.read(5))) == [6]


def test_closed_logs_leave_after_the_window_and_not_before() -> None:
    logs = EventLogRegistry(retention_s=10)
    old = logs.create("turn_old")
    old.close()
    new = logs.create("turn_new")
    new.close()
    running = logs.create("turn_running")
    assert old.closed_at is not None
    assert new.closed_at is not None
    old.closed_at -= 5  # closed five seconds before the other one

    assert logs.expire(now=old.closed_at + 9.9) == 0
    assert logs.expire(now=old.closed_at + 10.1) == 1
    assert logs.get("turn_old") is None
    assert logs.get("turn_new") is new
    assert logs.expire(now=new.closed_at + 10.1) == 1
    assert logs.get("turn_new") is None
    assert logs.get("turn_running") is running  # open logs stay whatever the time
    assert len(logs) == 1


def test_past_the_byte_cap_the_oldest_finished_logs_leave_first() -> None:
    probe = EventLog("turn_probe")
    _fill(probe, 10)
    turn_size = probe.size
    logs = EventLogRegistry(retention_s=600, max_bytes=3 * turn_size)
    first, second = logs.create("turn_1"), logs.create("turn_2")
    running = logs.create("turn_running")
    for log in (first, second, running):
        _fill(log, 10)
    second.close()  # the second turn finishes first
    first.close()
    assert logs.bytes_held == 3 * turn_size
    assert logs.evicted == 0

    _fill(running, 1)  # over the cap: the log that closed first leaves
    assert logs.get("turn_2") is None
    assert logs.get("turn_1") is first
    assert logs.evicted == 1
    assert logs.bytes_held <= 3 * turn_size

    _fill(running, 30)  # running logs stay whatever they hold
    assert logs.get("turn_1") is None
    assert logs.get("turn_running") is running
    assert logs.bytes_held == running.size
    assert logs.evicted == 2


def test_a_reopened_log_is_running_again_and_stays() -> None:
    probe = EventLog("turn_probe")
    _fill(probe, 10)
    logs = EventLogRegistry(retention_s=600, max_bytes=2 * probe.size)
    waiting = logs.create("turn_waiting")
    _fill(waiting, 10)
    waiting.close()  # turn.requires_action
    waiting.reopen()  # the tool outputs came
    other = logs.create("turn_other")
    _fill(other, 11)
    assert logs.get("turn_waiting") is waiting
    other.close()  # the only finished log, over the cap: it leaves at once
    assert logs.get("turn_other") is None
    assert logs.expire(now=float("inf")) == 0  # nothing closed is left to expire
