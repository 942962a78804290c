"""Starting a coroutine by hand, so that its first step runs now, in the caller's own step.

`asyncio.create_task` (or `ensure_future`) runs a coroutine's first step on a later pass of the event loop,
and under load a pass waits behind every socket read that is ready (tens of milliseconds at 700 relayed
streams). Stepped by hand, a send (a database statement, a body message) is on its way before the caller
goes on; what is left of it is awaited from where it stopped with `Resumed`. Only for coroutines that do not
look at `asyncio.current_task()` in their first step: it is the caller's task there.
"""

from __future__ import annotations

from collections.abc import Coroutine, Generator
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Resumed(Generic[T]):
    """A coroutine that was stepped by hand and suspended on `blocked_on`, awaitable from where it stopped.
    Hand-written because asyncio can only start a coroutine, not take over one already running; this is
    what `yield from` does, with the first value already yielded."""

    __slots__ = ("_blocked_on", "_coroutine")

    def __init__(self, coroutine: Coroutine[Any, Any, T], blocked_on: Any) -> None:
        self._coroutine = coroutine
        self._blocked_on = blocked_on

    def __await__(self) -> Generator[Any, Any, T]:
        coroutine, value = self._coroutine, self._blocked_on
        while True:
            try:
                sent = yield value
            except BaseException as error:
                try:
                    value = coroutine.throw(error)
                except StopIteration as finished:
                    return finished.value  # type: ignore[no-any-return]
            else:
                try:
                    value = coroutine.send(sent)
                except StopIteration as finished:
                    return finished.value  # type: ignore[no-any-return]

    def close(self) -> None:
        self._coroutine.close()


def start(coroutine: Coroutine[Any, Any, T]) -> T | Resumed[T]:
    """Run `coroutine` up to its first suspension: its result if it finished there, else the rest of it to
    await. Its errors in that first step are raised here."""
    try:
        blocked_on = coroutine.send(None)
    except StopIteration as finished:
        return finished.value  # type: ignore[no-any-return]
    return Resumed(coroutine, blocked_on)
