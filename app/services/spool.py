"""A local, fsync'd spool for final turn writes the database could not take.

If the database is unreachable when a turn ends, its final state and ledger rows go here as one JSON line,
flushed to disk before the turn's terminal event goes out; the runner replays the spool when the database
is back. Replays are idempotent (the turn is finished only while still in flight, ledger rows are unique on
the response id), so a row written twice is never doubled.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


class Spool:
    def __init__(self, directory: Path) -> None:
        self.path = directory / "final-writes.jsonl"
        self._lock = asyncio.Lock()

    @property
    def depth(self) -> int:
        try:
            with self.path.open("rb") as handle:
                return sum(1 for line in handle if line.strip())
        except FileNotFoundError:
            return 0

    async def append(self, entry: dict[str, Any]) -> None:
        line = (json.dumps(entry, separators=(",", ":")) + "\n").encode()
        async with self._lock:
            await asyncio.to_thread(self._append_sync, line)

    def _append_sync(self, line: bytes) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    async def replay(self, apply: Callable[[dict[str, Any]], Awaitable[None]]) -> int:
        """Apply every spooled entry in order; keep the ones that still fail. Returns how many were applied."""
        async with self._lock:
            if not self.path.exists():
                return 0
            entries = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
            remaining: list[dict[str, Any]] = []
            applied = 0
            for index, entry in enumerate(entries):
                try:
                    await apply(entry)
                    applied += 1
                except Exception:
                    logger.warning("spool.replay_failed", extra={"remaining": len(entries) - index}, exc_info=True)
                    remaining = entries[index:]
                    break
            await asyncio.to_thread(self._rewrite_sync, remaining)
            if applied:
                logger.info("spool.replayed", extra={"applied": applied, "remaining": len(remaining)})
            return applied

    def _rewrite_sync(self, entries: list[dict[str, Any]]) -> None:
        if not entries:
            self.path.unlink(missing_ok=True)
            return
        temporary = self.path.with_suffix(".tmp")
        with temporary.open("w") as handle:
            for entry in entries:
                handle.write(json.dumps(entry, separators=(",", ":")) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        temporary.replace(self.path)
