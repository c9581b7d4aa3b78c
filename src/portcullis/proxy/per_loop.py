"""One object per event loop, found again cheaply on every wait.

The proxy runs one loop per thread (a worker process, or a test's loop); a
new loop in the same thread gets a new object and the old one is closed.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar


class LoopBound(Protocol):
    loop: asyncio.AbstractEventLoop

    def close(self) -> None: ...


T = TypeVar("T", bound=LoopBound)


class PerLoop(Generic[T]):
    """`per_loop(loop)`: the T made by `make(loop)` for this thread's current loop."""

    def __init__(self, make: Callable[[asyncio.AbstractEventLoop], T]) -> None:
        self._make = make
        self._local = threading.local()
        # The last one handed out, whichever thread asked: with one loop per
        # process (the proxy) every call after the first ends at this check.
        self._last: T | None = None

    def __call__(self, loop: asyncio.AbstractEventLoop) -> T:
        last = self._last
        if last is not None and last.loop is loop:
            return last
        current: T | None = getattr(self._local, "current", None)
        if current is None or current.loop is not loop:
            if current is not None:
                current.close()
            current = self._local.current = self._make(loop)
        self._last = current
        return current
