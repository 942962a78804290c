"""Connections waiting on a listening socket are all accepted at one readiness (app/batch_accept.py)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Coroutine
from typing import Any, cast

import pytest
import uvloop

from app.batch_accept import BatchAcceptor, accepts_one_per_iteration, take_over_listening

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "uvloop": uvloop.new_event_loop,
    "asyncio": asyncio.new_event_loop,
}


class Echo(asyncio.Protocol):
    made: list[Echo] = []  # the protocols of the test that runs (reset by run_in)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.made.append(self)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data.upper())


def run_in(loop_name: str, main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    loop = LOOPS[loop_name]()
    Echo.made = []

    async def with_cleanup() -> None:
        try:
            await main()
        finally:
            for protocol in Echo.made:
                protocol.transport.close()
            await asyncio.sleep(0.05)  # the transports finish closing

    try:
        loop.run_until_complete(with_cleanup())
    finally:
        loop.close()


def listening_socket() -> socket.socket:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    return listener


async def exchange(port: int, payload: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(payload)
    answer = await reader.readexactly(len(payload))
    writer.close()
    return answer


@pytest.mark.parametrize("loop_name", LOOPS)
def test_one_readiness_accepts_every_waiting_connection(loop_name: str) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        listener = listening_socket()
        made = Echo.made
        # Twenty clients whose connections the kernel completed, waiting in the accept queue.
        clients = [socket.create_connection(listener.getsockname()) for _ in range(20)]
        acceptor = BatchAcceptor(loop, listener, Echo, batch=64)
        try:
            assert acceptor.accept_waiting() == 20
            for _ in range(50):
                if len(made) == 20:
                    break
                await asyncio.sleep(0.01)
            assert len(made) == 20
            client = clients[7]
            client.setblocking(False)
            await loop.sock_sendall(client, b"ping")
            assert await asyncio.wait_for(loop.sock_recv(client, 4), 5) == b"PING"
        finally:
            for client in clients:
                client.close()
            acceptor.close()

    run_in(loop_name, main)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_a_batch_stops_at_its_size_and_the_rest_wait_for_the_next_readiness(loop_name: str) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        listener = listening_socket()
        clients = [socket.create_connection(listener.getsockname()) for _ in range(5)]
        acceptor = BatchAcceptor(loop, listener, Echo, batch=3)
        try:
            assert acceptor.accept_waiting() == 3
            assert acceptor.accept_waiting() == 2
            assert acceptor.accept_waiting() == 0
        finally:
            for client in clients:
                client.close()
            acceptor.close()

    run_in(loop_name, main)


def test_the_loops_server_is_taken_over_and_closing_stops_accepting() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        assert accepts_one_per_iteration(loop)
        server = await loop.create_server(Echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        acceptors = take_over_listening(loop, server, Echo, batch=64)
        try:
            # The loop's own server is closed; the socket still listens, through the acceptor.
            assert not server.is_serving()
            answers = await asyncio.gather(*(exchange(port, f"hello {n}".encode()) for n in range(30)))
            assert answers == [f"HELLO {n}".encode() for n in range(30)]
        finally:
            for acceptor in acceptors:
                acceptor.close()
        with pytest.raises(ConnectionRefusedError):
            await exchange(port, b"late")

    run_in("uvloop", main)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_an_accepted_connection_is_set_up_at_the_loops_next_pass(loop_name: str) -> None:
    # A busy relay's passes are tens of milliseconds: each one a new connection waits for is its client's.
    async def main() -> None:
        loop = asyncio.get_running_loop()
        listener = listening_socket()
        client = socket.create_connection(listener.getsockname())
        acceptor = BatchAcceptor(loop, listener, Echo, batch=64)
        try:
            assert acceptor.accept_waiting() == 1
            await asyncio.sleep(0)  # one pass
            assert len(Echo.made) == 1
        finally:
            client.close()
            acceptor.close()

    run_in(loop_name, main)
