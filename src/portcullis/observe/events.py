"""What the proxy reports: one event when it decides, one when a connection ends.

Events are plain records that the proxy builds once and hands to the log and to
the metrics; neither sink may change them. They are not frozen: a frozen
dataclass sets each field through object.__setattr__, which made building the
two events of a connection three times as costly (bench/RESULTS.md).
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass

from portcullis.basics.vocabulary import CloseReason, Decision, Mode, Reason


@dataclass(slots=True)
class DecisionEvent:
    time: float  # epoch seconds
    id: str  # connection id, see new_connection_id()
    client: str  # client IP
    client_port: int
    mode: Mode
    host: str | None  # as requested, normalized; None when no name was found
    port: int
    sni: str | None
    rule: str | None  # name of the deciding rule; None for the default
    decision: Decision
    reason: Reason
    resolved: tuple[str, ...] = ()
    dialed: str | None = None  # "ip:port" actually connected to
    dns_ms: float | None = None
    connect_ms: float | None = None
    original_dst: str | None = None  # "ip:port" from SO_ORIGINAL_DST
    identity: str | None = None  # proven (or, refused, tried): never a secret
    parent: str | None = None  # the parent proxy chained to (its URL, never credentials)
    parent_status: int | None = None  # the parent's answer to CONNECT
    balancer: str | None = None  # "ip:port" of the load balancer that sent a PROXY header


@dataclass(slots=True)
class CloseEvent:
    time: float
    id: str
    client: str
    host: str | None
    bytes_up: int  # client -> upstream
    bytes_down: int  # upstream -> client
    duration_s: float
    close_reason: CloseReason


# Ids only need to be unique among the lines one deployment logs. A random
# per-process prefix plus a counter costs one next() per connection, where a
# uuid4 would cost a urandom syscall and sixteen bytes of formatting.
_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"


def _base36(n: int) -> str:
    if n == 0:
        return "0"
    out = []
    while n:
        n, r = divmod(n, 36)
        out.append(_ALPHABET[r])
    return "".join(reversed(out))


def _fresh_prefix() -> str:
    return os.urandom(4).hex()


_prefix = _fresh_prefix()
_counter = itertools.count(1)
# The id's text but its last digit, for ids from 36 * _high on: the loop in
# _base36 then runs once every 36 connections, not for each.
_high = 0
_high_text = f"{_prefix}-"


def _reset_after_fork() -> None:
    # Forked workers (SO_REUSEPORT) would otherwise all count from the same
    # prefix and the same value and log colliding ids.
    global _prefix, _counter, _high, _high_text
    _prefix = _fresh_prefix()
    _counter = itertools.count(1)
    _high, _high_text = 0, f"{_prefix}-"


os.register_at_fork(after_in_child=_reset_after_fork)


def new_connection_id() -> str:
    """A short id unique within this process and, with high odds, across processes:
    the prefix, a dash and the connection's number in base 36. Called on the
    event loop's thread only: the two globals are not updated atomically."""
    global _high, _high_text
    high, low = divmod(next(_counter), 36)
    if high != _high:
        _high, _high_text = high, f"{_prefix}-{_base36(high) if high else ''}"
    return _high_text + _ALPHABET[low]
