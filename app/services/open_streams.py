"""The event streams open on this replica, by the API key that opened them: revoking the key ends them.

A stream opened with a key, or with a stream token made with it, registers here for as long as it is open.
When this replica hears of a revoke (it made it, or Postgres told it: `app.services.revocations`), every stream
of that key ends at once: the task sending it is cancelled, and the stream ends itself cleanly (see
`app.api.event_stream`). Nothing here is on the per-event path, and a stream costs one small object.
"""

from __future__ import annotations

import asyncio

from cachetools import LRUCache

# Revoked keys remembered, so a stream that registers just after its key's revoke was heard still ends.
REVOKED_KEYS_KEPT = 10_000


class OpenStream:
    """One open stream, registered while its context is open: the task sending it, and whether a revoke ended
    it."""

    __slots__ = ("key_hash", "registry", "revoked", "task")

    def __init__(self, registry: KeyStreams, key_hash: str, task: asyncio.Task[object]) -> None:
        self.registry = registry
        self.key_hash = key_hash
        self.task = task
        self.revoked = False

    def __enter__(self) -> OpenStream:
        self.registry.add(self)
        return self

    def __exit__(self, *_: object) -> None:
        self.registry.discard(self)

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

    def open(self, key_hash: str) -> OpenStream:
        """A context within which the current task sends a stream of `key_hash`'s: a revoke meanwhile cancels the
        task (and marks the `OpenStream` revoked)."""
        task = asyncio.current_task()
        assert task is not None
        return OpenStream(self, key_hash, task)

    def add(self, stream: OpenStream) -> None:
        if stream.key_hash in self._revoked:
            stream.end()
        self._open.setdefault(stream.key_hash, set()).add(stream)

    def discard(self, stream: OpenStream) -> None:
        streams = self._open.get(stream.key_hash)
        if streams is not None:
            streams.discard(stream)
            if not streams:
                del self._open[stream.key_hash]

    def end(self, key_hash: str) -> None:
        """The key was revoked: end its streams, and any that registers later."""
        self._revoked[key_hash] = True
        for stream in self._open.pop(key_hash, set()):
            stream.end()
