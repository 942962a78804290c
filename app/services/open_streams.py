"""The event streams open on this replica, by the API key that opened them: revoking the key ends them.

A stream opened with a key, or with a stream token made with it, registers here for as long as it is open.
When this replica hears of a revoke (it made it, or Postgres told it: `app.services.revocations`), every stream
of that key ends at once: the task sending it is cancelled, and the stream ends itself cleanly (see
`app.api.event_stream`). Nothing here is on the per-event path, and a stream costs one small object.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

from cachetools import LRUCache

# Revoked keys remembered, so a stream that registers just after its key's revoke was heard still ends.
REVOKED_KEYS_KEPT = 10_000


class OpenStream:
    """One open stream: the task sending it, and whether a revoke ended it."""

    __slots__ = ("revoked", "task")

    def __init__(self, task: asyncio.Task[object]) -> None:
        self.task = task
        self.revoked = False

    def end(self) -> None:
        if not self.revoked:
            self.revoked = True
            self.task.cancel()


class KeyStreams:
    def __init__(self) -> None:
        self._open: dict[str, set[OpenStream]] = {}
        # A key is revoked for good: a stream authenticated just before the revoke was heard, and registered
        # just after it, ends at once rather than running on.
        self._revoked: LRUCache[str, bool] = LRUCache(REVOKED_KEYS_KEPT)

    @contextmanager
    def open(self, key_hash: str) -> Iterator[OpenStream]:
        """The current task sends a stream of `key_hash`'s until the context closes: a revoke meanwhile cancels
        it (and marks the returned `OpenStream` revoked)."""
        task = asyncio.current_task()
        assert task is not None
        stream = OpenStream(task)
        if key_hash in self._revoked:
            stream.end()
        self._open.setdefault(key_hash, set()).add(stream)
        try:
            yield stream
        finally:
            streams = self._open.get(key_hash)
            if streams is not None:
                streams.discard(stream)
                if not streams:
                    del self._open[key_hash]

    def end(self, key_hash: str) -> None:
        """The key was revoked: end its streams, and any that registers later."""
        self._revoked[key_hash] = True
        for stream in self._open.pop(key_hash, set()):
            stream.end()
