"""Parley's outgoing SSE frames: what a browser's EventSource parser makes of them."""

from __future__ import annotations

from app.streaming.frames import encode_frame


def parse(stream: bytes) -> list[dict[str, str]]:
    """The WHATWG EventSource parsing of `id`, `event`, `data` and `retry` fields, one dict per event."""
    events: list[dict[str, str]] = []
    fields: dict[str, str] = {}
    for line in stream.decode().replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        if line == "":
            if fields:
                events.append(fields)
            fields = {}
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        fields[name] = f"{fields[name]}\n{value}" if name == "data" and name in fields else value
    return events


def test_a_frame_is_one_event_with_its_id_name_and_data() -> None:
    frame = encode_frame(7, "response.output_text.delta", b'{"delta":"hi"}')
    assert frame == b'id: 7\nevent: response.output_text.delta\ndata: {"delta":"hi"}\n\n'
    assert parse(frame) == [{"id": "7", "event": "response.output_text.delta", "data": '{"delta":"hi"}'}]


def test_the_first_frame_carries_the_reconnect_delay() -> None:
    assert parse(encode_frame(1, "turn.created", b"{}", retry_ms=2000)) == [
        {"retry": "2000", "id": "1", "event": "turn.created", "data": "{}"}
    ]


def test_newlines_in_a_name_or_payload_cannot_inject_another_event() -> None:
    frame = encode_frame(3, "evil\nevent: turn.completed\r", b"line one\nid: 99\n\nevent: x\rdata: y")
    events = parse(frame)
    assert len(events) == 1
    assert events[0]["id"] == "3"
    assert events[0]["event"] == "evil event: turn.completed "
    # Every payload line stays data of this one event (the client sees the payload's lines, joined).
    assert events[0]["data"] == "line one\nid: 99\n\nevent: xdata: y"
    # The same name again (now from the cache) is made just as safe.
    assert parse(encode_frame(4, "evil\nevent: turn.completed\r", b"{}"))[0]["event"] == "evil event: turn.completed "
