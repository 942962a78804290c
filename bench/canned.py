"""A server that answers every request with the same recorded SSE body, as cheaply as Python can: the
load generator's own ceiling is measured against it (and against the simulator with a trivial consumer).

    python -m bench.canned --port P --body FILE [--events-per-write N]

The body is sent with chunked transfer encoding, N events per chunk (0: the whole body in one chunk).
"""

from __future__ import annotations

import argparse
import asyncio
from typing import cast

HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"


def chunked(body: bytes, events_per_write: int) -> list[bytes]:
    events = [event + b"\n\n" for event in body.split(b"\n\n") if event]
    if events_per_write <= 0:
        groups = [b"".join(events)]
    else:
        groups = [b"".join(events[i : i + events_per_write]) for i in range(0, len(events), events_per_write)]
    return [b"%x\r\n%s\r\n" % (len(group), group) for group in groups] + [b"0\r\n\r\n"]


class CannedProtocol(asyncio.Protocol):
    def __init__(self, writes: list[bytes]) -> None:
        self.writes = writes
        self.transport: asyncio.Transport | None = None
        self.received = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.received += data
        head_end = self.received.find(b"\r\n\r\n")
        if head_end < 0 or self.transport is None:
            return
        length = 0
        for line in self.received[:head_end].split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        if len(self.received) < head_end + 4 + length:
            return
        transport = self.transport
        transport.write(HEAD)
        for piece in self.writes:
            transport.write(piece)
        transport.close()


async def serve(port: int, writes: list[bytes]) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: CannedProtocol(writes), "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


def main() -> None:
    import uvloop

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--body", required=True)
    parser.add_argument("--events-per-write", type=int, default=1)
    args = parser.parse_args()
    with open(args.body, "rb") as handle:
        writes = chunked(handle.read(), args.events_per_write)
    uvloop.run(serve(args.port, writes))


if __name__ == "__main__":
    main()
