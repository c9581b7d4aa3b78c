"""The event loop the proxy runs on: uvloop when it is installed, asyncio's otherwise.

This is the only module that knows about uvloop, so the rest of the proxy (and
the tests, which run the relay on both loops) speak plain asyncio.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def uvloop_available() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def new_event_loop(*, use_uvloop: bool = True) -> asyncio.AbstractEventLoop:
    """A fresh loop; uvloop's when asked for and importable, else asyncio's default."""
    if use_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
            return loop
    return asyncio.new_event_loop()


def loop_factory(*, use_uvloop: bool = True) -> Callable[[], asyncio.AbstractEventLoop]:
    return lambda: new_event_loop(use_uvloop=use_uvloop)


def run(main: Coroutine[Any, Any, T], *, use_uvloop: bool = True, debug: bool = False) -> T:
    """Like asyncio.run, on the loop new_event_loop() picks."""
    with asyncio.Runner(loop_factory=loop_factory(use_uvloop=use_uvloop), debug=debug) as runner:
        return runner.run(main)
