"""The quota limiter (policy/limiter.py): token buckets and tunnel counts on an
injected clock, charged all or nothing, released once."""

from __future__ import annotations

import pytest

from portcullis.basics.errors import QuotaExceeded
from portcullis.basics.vocabulary import Reason
from portcullis.config.access import Quota
from portcullis.policy.limiter import Quotas, TokenBucket


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def refused(quotas: Quotas, groups: set[str], member: str = "10.0.0.1") -> QuotaExceeded:
    with pytest.raises(QuotaExceeded) as caught:
        quotas.admit(groups, member)
    return caught.value


def test_a_bucket_gives_its_burst_then_its_rate() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=2, burst=3, now=clock())
    taken = 0
    while bucket.ready(clock()):
        bucket.take()
        taken += 1
    assert taken == 3
    clock.now += 0.25  # half a token
    assert not bucket.ready(clock())
    clock.now += 0.25
    assert bucket.ready(clock())
    clock.now += 60  # never more than the burst banked
    assert bucket.full(clock())
    for _ in range(3):
        bucket.take()
    assert not bucket.ready(clock())


def test_over_the_rate_is_429_rate_limited_and_it_refills() -> None:
    clock = Clock()
    quotas = Quotas({"ci": Quota(rate=1, burst=2)}, clock)
    quotas.admit({"ci"}, "a").release()
    quotas.admit({"ci"}, "a").release()
    error = refused(quotas, {"ci"})
    assert (error.status, error.reason, error.group, error.limit) == (
        429, Reason.RATE_LIMITED, "ci", "rate")
    assert "quotas.ci.rate" in str(error)
    clock.now += 1
    quotas.admit({"ci"}, "a")


def test_over_the_tunnels_is_503_over_capacity_until_one_is_released() -> None:
    quotas = Quotas({"ci": Quota(max_tunnels=2)}, Clock())
    first, _second = quotas.admit({"ci"}, "a"), quotas.admit({"ci"}, "b")
    error = refused(quotas, {"ci"})
    assert (error.status, error.reason, error.limit) == (503, Reason.OVER_CAPACITY, "tunnels")
    assert quotas.open_tunnels("ci") == 2
    first.release()
    first.release()  # idempotent: the second release gives back nothing more
    assert quotas.open_tunnels("ci") == 1
    quotas.admit({"ci"}, "c")
    refused(quotas, {"ci"})


def test_groups_are_independent_and_unlimited_groups_cost_nothing() -> None:
    quotas = Quotas({"noisy": Quota(max_tunnels=1, rate=1, burst=1)}, Clock())
    quotas.admit({"noisy"}, "a")
    refused(quotas, {"noisy"})
    for _ in range(100):  # another group, and no group at all, are never refused
        quotas.admit({"workers"}, "b")
        quotas.admit(set(), "b")
    assert quotas.open_tunnels("workers") == 0


def test_a_client_in_two_groups_is_charged_all_or_nothing() -> None:
    quotas = Quotas({"a": Quota(max_tunnels=5), "b": Quota(max_tunnels=1)}, Clock())
    quotas.admit({"a", "b"}, "x")
    refused(quotas, {"a", "b"})  # b is full: a is not charged for the refusal
    assert quotas.open_tunnels("a") == 1
    quotas.admit({"a"}, "y")
    assert quotas.open_tunnels("a") == 2


def test_a_refused_tunnel_spends_no_token() -> None:
    clock = Clock()
    quotas = Quotas({"ci": Quota(max_tunnels=1, rate=1, burst=2)}, clock)
    lease = quotas.admit({"ci"}, "a")
    for _ in range(5):
        assert refused(quotas, {"ci"}).limit == "tunnels"
    lease.release()
    quotas.admit({"ci"}, "a").release()  # the second token was still there


def test_per_member_each_identity_or_address_has_its_own_quota() -> None:
    quotas = Quotas({"ci": Quota(max_tunnels=1, per="member")}, Clock())
    quotas.admit({"ci"}, "runner-1")
    error = refused(quotas, {"ci"}, "runner-1")
    assert "runner-1 (group ci)" in str(error)
    quotas.admit({"ci"}, "runner-2")
    assert quotas.open_tunnels("ci") == 2


def test_a_reload_keeps_open_tunnels_counted_and_a_new_rate_starts_full() -> None:
    clock = Clock()
    quotas = Quotas({"ci": Quota(max_tunnels=3, rate=1, burst=1)}, clock)
    held = [quotas.admit({"ci"}, "a")]
    clock.now += 1
    held.append(quotas.admit({"ci"}, "a"))
    quotas.configure({"ci": Quota(max_tunnels=2, rate=10, burst=10)})
    assert refused(quotas, {"ci"}).limit == "tunnels"  # the two open ones still count
    held[0].release()
    held.append(quotas.admit({"ci"}, "a"))
    quotas.configure({})
    for _ in range(10):
        quotas.admit({"ci"}, "a")  # no quota any more: nothing refused


def test_idle_members_are_forgotten_when_there_are_too_many(monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    import portcullis.policy.limiter as limiter

    monkeypatch.setattr(limiter, "_MEMBERS_MAX", 4)
    clock = Clock()
    quotas = Quotas({"ci": Quota(max_tunnels=1, rate=1, per="member")}, clock)
    held = quotas.admit({"ci"}, "busy")
    for n in range(20):
        quotas.admit({"ci"}, f"m{n}").release()
        clock.now += 2
    assert len(quotas._states) <= 4
    assert refused(quotas, {"ci"}, "busy").limit == "tunnels"  # an open tunnel is kept
    held.release()
