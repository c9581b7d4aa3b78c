"""Per-group quotas: concurrent tunnels and a token bucket of new connections
(docs/semantics.md §12). Pure: the clock is handed in, nothing here awaits.

A client is charged in every limited group it belongs to, all or nothing: when
one of them refuses, none is charged, so a refused client costs the others
nothing. A granted connection holds a `Lease` until its tunnel ends.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from portcullis.basics.errors import QuotaExceeded
from portcullis.config.access import Quota

Clock = Callable[[], float]
# Per-member state is swept of idle members beyond this many (a bound, not a limit).
_MEMBERS_MAX = 65536


class TokenBucket:
    """`rate` tokens a second, at most `burst` banked; one token per new connection."""

    __slots__ = ("_stamp", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate, self.burst = rate, burst
        self._tokens, self._stamp = float(burst), now

    def _refill(self, now: float) -> None:
        if now > self._stamp:
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now

    def ready(self, now: float) -> bool:
        self._refill(now)
        return self._tokens >= 1.0

    def take(self) -> None:
        self._tokens -= 1.0

    def full(self, now: float) -> bool:
        self._refill(now)
        return self._tokens >= self.burst


@dataclass(slots=True)
class _State:
    """One group's (or one member's) open tunnels and bucket."""

    open: int = 0
    bucket: TokenBucket | None = None


@dataclass(slots=True)
class Lease:
    """Tunnels held in some groups; `release` gives them back, once."""

    held: list[_State] = field(default_factory=list)

    def release(self) -> None:
        held, self.held = self.held, []
        for state in held:
            state.open -= 1


class Quotas:
    def __init__(self, quotas: Mapping[str, Quota], clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._states: dict[tuple[str, str], _State] = {}
        self._quotas: dict[str, Quota] = {}
        self.configure(quotas)

    def configure(self, quotas: Mapping[str, Quota]) -> None:
        """Take a reloaded policy's quotas. Open tunnels stay counted (a lowered
        limit refuses new ones until enough have closed); a changed rate starts
        a full bucket."""
        self._quotas = dict(quotas)
        for (group, _), state in list(self._states.items()):
            quota = self._quotas.get(group)
            bucket = state.bucket
            if bucket is not None and (
                quota is None or quota.rate is None
                or (bucket.rate, bucket.burst) != (quota.rate, _burst(quota))
            ):
                state.bucket = None  # made again, full, at its next use

    def __bool__(self) -> bool:
        return bool(self._quotas)

    def open_tunnels(self, group: str) -> int:
        return sum(s.open for (g, _), s in self._states.items() if g == group)

    def admit(self, groups: Iterable[str], member: str) -> Lease:
        """Charge one new tunnel to every limited group among `groups`; `member` is the
        client's identity or address (for `per: member`). QuotaExceeded, charging
        nothing, when one of them is over its tunnels (503) or its rate (429)."""
        now = self._clock()
        charged: list[tuple[str, Quota, _State]] = []
        for group in sorted(groups):
            quota = self._quotas.get(group)
            if quota is not None:
                charged.append((group, quota, self._state(group, quota, member, now)))
        for group, quota, state in charged:
            if quota.max_tunnels is not None and state.open >= quota.max_tunnels:
                raise QuotaExceeded(
                    f"{_whose(group, quota, member)} has {state.open} open tunnels,"
                    f" its limit (quotas.{group}.max_tunnels)", group=group, limit="tunnels")
        for group, quota, state in charged:
            if state.bucket is not None and not state.bucket.ready(now):
                raise QuotaExceeded(
                    f"{_whose(group, quota, member)} opened more than {quota.rate:g} new"
                    f" connections a second (quotas.{group}.rate); retry shortly",
                    group=group, limit="rate")
        lease = Lease()
        for _, _, state in charged:
            if state.bucket is not None:
                state.bucket.take()
            state.open += 1
            lease.held.append(state)
        return lease

    def _state(self, group: str, quota: Quota, member: str, now: float) -> _State:
        key = (group, member if quota.per == "member" else "")
        state = self._states.get(key)
        if state is None:
            if len(self._states) >= _MEMBERS_MAX:
                self._sweep(now)
            state = self._states[key] = _State()
        if state.bucket is None and quota.rate is not None:
            state.bucket = TokenBucket(quota.rate, _burst(quota), now)
        return state

    def _sweep(self, now: float) -> None:
        # Members with nothing open and a full bucket are as good as new: forget them.
        for key, state in list(self._states.items()):
            if state.open == 0 and (state.bucket is None or state.bucket.full(now)):
                del self._states[key]


def _burst(quota: Quota) -> int:
    assert quota.rate is not None
    return quota.burst if quota.burst is not None else max(1, int(quota.rate))


def _whose(group: str, quota: Quota, member: str) -> str:
    return f"group {group}" if quota.per == "group" else f"{member} (group {group})"
