"""Accepting a listening socket's waiting connections all at once, under uvloop.

libuv, beneath uvloop, accepts one connection per event-loop iteration since its 1.45 ("unix: don't accept()
connections in a loop", libuv#3696), and leaves the rest to the next iterations. A process relaying many streams
runs long iterations, so new connections wait in the kernel's accept queue: with 1,000 paced streams open, the
simulator's queue held 100-180 connections and a new one waited 1.2-2.9 s for its first byte, where the same
server on asyncio's own loop (which accepts up to the backlog at each readiness) answered in ~0.1 s. Parley's
server is the same uvicorn on the same loop. No option of libuv or uvloop restores the loop, so the listening
socket is taken from the loop's server and accepted from here: every waiting connection at each readiness, each
handed to the loop as an accepted socket, with uvicorn's own protocol.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable
from typing import Any

from app import coroutines

logger = logging.getLogger(__name__)

# Out of descriptors or memory: as asyncio's own server does, stop accepting for a while instead of spinning.
_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_RESOURCE_PAUSE_S = 1.0


class BatchAcceptor:
    """Accepts from `listener` up to `batch` connections at each readiness. Stands in for the loop's server in
    uvicorn's list of servers: `close` is all its shutdown asks of one."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        listener: socket.socket,
        protocol_factory: Callable[[], asyncio.Protocol],
        *,
        batch: int,
    ) -> None:
        self._loop = loop
        self._listener = listener
        self._protocol_factory = protocol_factory
        self._batch = batch
        self._closed = False
        self._connecting: set[asyncio.Task[object]] = set()
        listener.setblocking(False)
        loop.add_reader(listener.fileno(), self.accept_waiting)

    def accept_waiting(self) -> int:
        """Accept the connections waiting now (up to the batch); returns how many."""
        accepted = 0
        while accepted < self._batch:
            try:
                connection, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                break
            except ConnectionAbortedError:
                continue  # the client gave up while it waited
            except OSError as error:
                if error.errno not in _RESOURCE_ERRNOS:
                    raise
                logger.error("server.accept_paused", extra={"error": error.strerror, "pause_s": _RESOURCE_PAUSE_S})
                self._loop.remove_reader(self._listener.fileno())
                self._loop.call_later(_RESOURCE_PAUSE_S, self._resume)
                break
            accepted += 1
            self._hand_over(connection)
        return accepted

    def _hand_over(self, connection: socket.socket) -> None:
        connection.setblocking(False)
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # The transport set up here, stepped by hand: the protocol's `connection_made` (and the reading of the
        # request) then comes at the loop's next pass. From a task's first step it came a pass later, and a
        # pass of a busy relay is tens of milliseconds (see app/coroutines.py).
        try:
            setting_up = coroutines.start(self._loop.connect_accepted_socket(self._protocol_factory, connection))
        except Exception as error:
            logger.warning("server.accept_failed", extra={"error": type(error).__name__})
            connection.close()
            return
        if isinstance(setting_up, coroutines.Resumed):
            task = self._loop.create_task(_finish(setting_up))
            self._connecting.add(task)
            task.add_done_callback(self._connected)

    def _connected(self, task: asyncio.Task[object]) -> None:
        self._connecting.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            logger.warning("server.accept_failed", extra={"error": type(error).__name__})

    def _resume(self) -> None:
        if not self._closed:
            self._loop.add_reader(self._listener.fileno(), self.accept_waiting)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._loop.remove_reader(self._listener.fileno())
        self._listener.close()

    async def wait_closed(self) -> None:
        return None


async def _finish(setting_up: coroutines.Resumed[Any]) -> None:
    await setting_up


def take_over_listening(
    loop: asyncio.AbstractEventLoop,
    server: asyncio.AbstractServer,
    protocol_factory: Callable[[], asyncio.Protocol],
    *,
    batch: int,
) -> list[BatchAcceptor]:
    """The loop's `server` closed, its listening sockets kept open and accepted from by `BatchAcceptor`s."""
    sockets = getattr(server, "sockets", None) or []
    # Copies of the descriptors first: closing the server closes its own, and the sockets live on in these.
    listeners = [socket.socket(fileno=socket.dup(sock.fileno())) for sock in sockets]
    server.close()
    return [BatchAcceptor(loop, listener, protocol_factory, batch=batch) for listener in listeners]


def accepts_one_per_iteration(loop: asyncio.AbstractEventLoop) -> bool:
    """uvloop's (libuv's) servers do; asyncio's own accept up to the backlog at each readiness."""
    return type(loop).__module__.startswith("uvloop")
