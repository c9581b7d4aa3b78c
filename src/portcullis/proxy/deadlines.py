"""Coarse deadlines for the per-connection path: one loop timer for all of them.

Under uvloop a loop timer per wait (`call_at`, then `cancel`) costs about
1.7 us, and every connection had three: the dial, the ClientHello, the
tunnel's idle check (bench/findings.md). Here a deadline is an entry in the
bucket of its TICK-long slot; one loop timer, armed for the earliest pending
slot, fires each bucket's entries once its slot has passed. So a deadline
fires no earlier than asked and at most TICK later, and cancelling it is a
dict deletion. Timeouts are seconds long; TICK is below what an operator or a
client can tell apart.
"""

from __future__ import annotations

import asyncio
import heapq
import math
from collections.abc import Callable
from typing import Any

from portcullis.proxy.per_loop import PerLoop

TICK = 0.05
_PER_SECOND = 1 / TICK

Expire = Callable[[Any], object]


class Deadlines:
    """The deadlines of one event loop (`deadlines_for`)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        # slot -> {key: expire}; a slot ends at slot * TICK (loop time).
        self._buckets: dict[int, dict[Any, Expire]] = {}
        self._slots: list[int] = []  # heap of the slots in _buckets
        self._timer: asyncio.TimerHandle | None = None
        self._timer_slot = 0

    def add(self, when: float, key: Any, expire: Expire) -> int:
        """Call `expire(key)` once loop time has passed `when`, unless cancelled;
        the slot to cancel it with. `key` is hashed: one pending entry per key and slot."""
        slot = math.floor(when * _PER_SECOND) + 1  # slot * TICK > when
        bucket = self._buckets.get(slot)
        if bucket is None:
            bucket = self._buckets[slot] = {}
            heapq.heappush(self._slots, slot)
            if self._timer is None or slot < self._timer_slot:
                self._arm(slot)
        bucket[key] = expire
        return slot

    def cancel(self, slot: int, key: Any) -> None:
        bucket = self._buckets.get(slot)
        if bucket is not None:
            bucket.pop(key, None)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._buckets.clear()
        self._slots.clear()

    def _arm(self, slot: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_slot = slot
        self._timer = self.loop.call_at(slot * TICK, self._fire)

    def _fire(self) -> None:
        self._timer = None
        now = self.loop.time()
        slots = self._slots
        while slots and slots[0] * TICK <= now:
            slot = heapq.heappop(slots)
            bucket = self._buckets[slot]
            # Popped one by one: an expiry may cancel (or add) another of the slot.
            while bucket:
                key, expire = bucket.popitem()
                try:
                    expire(key)
                except Exception as exc:  # one entry's bug must not strand the others
                    self.loop.call_exception_handler(
                        {"message": "deadline callback failed", "exception": exc})
            del self._buckets[slot]
        if slots:
            self._arm(slots[0])


deadlines_for: PerLoop[Deadlines] = PerLoop(Deadlines)
