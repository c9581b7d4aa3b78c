"""Bounded tables of answers already computed, for pure functions on the
per-connection path (a CONNECT head's parse, a ClientHello's layout, a
verdict): the same few inputs recur on every connection.

A full table is emptied rather than trimmed: a client that sends ever new
inputs only costs itself the recomputation, and no entry needs a timestamp
or a linked list to be evicted in order.
"""

from __future__ import annotations

from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")


def remember(table: dict[K, V], key: K, value: V, limit: int) -> V:
    """Store `value` under `key`, emptying `table` first when it holds `limit`
    entries; returns `value`."""
    if len(table) >= limit:
        table.clear()
    table[key] = value
    return value
