"""The resolver against a real DNS server on loopback (tests/support/dnsserver.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine, Iterator
from ipaddress import ip_address
from typing import Any

import pytest
from tests.support.dnsserver import DnsServer, Record

from portcullis.basics.errors import DnsFailure
from portcullis.net.resolver import Resolution, Resolver, parse_server


class Clock:
    """A monotonic clock the test moves by hand, for TTL expiry."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def server() -> Iterator[DnsServer]:
    records = {
        "reg.test": [Record("A", "127.0.0.2", 60), Record("A", "127.0.0.3", 60),
                     Record("AAAA", "fd00::2", 120)],
        "v4only.test": [Record("A", "192.0.2.1", 60)],
        "short.test": [Record("A", "192.0.2.2", 1)],
        "long.test": [Record("A", "192.0.2.3", 86400)],
        "alias.test": [Record("CNAME", "hop.test", 30)],
        "hop.test": [Record("CNAME", "reg.test", 10)],
        "dangling.test": [Record("CNAME", "missing.test", 30)],
        "nodata.test": [],
        "big.test": [Record("A", f"10.0.{i // 200}.{i % 200}", 60) for i in range(120)],
    }  # fmt: skip
    with DnsServer(records) as srv:
        yield srv


def make(server: DnsServer, *, timeout: float = 1.0, **kw: Any) -> Resolver:
    return Resolver(servers=[server.server], timeout=timeout, **kw)


def run(coro: Coroutine[Any, Any, Resolution]) -> Resolution:
    return asyncio.run(coro)


def failure(resolver: Resolver, name: str) -> DnsFailure:
    with pytest.raises(DnsFailure) as info:
        run(resolver.resolve(name))
    return info.value


def ips(*texts: str) -> tuple[object, ...]:
    return tuple(ip_address(t) for t in texts)


def by_family(res: Resolution) -> tuple[set[str], set[str]]:
    """(IPv4, IPv6) address sets, after checking every IPv4 comes first.

    Within a family the server shuffles its answer (round robin), so the
    order there is the server's to choose.
    """
    versions = [a.version for a in res.addresses]
    assert versions == sorted(versions), f"IPv6 before IPv4 in {res.addresses}"
    v4 = {str(a) for a in res.addresses if a.version == 4}
    v6 = {str(a) for a in res.addresses if a.version == 6}
    return v4, v6


REG = ({"127.0.0.2", "127.0.0.3"}, {"fd00::2"})
REG_V4 = ({"127.0.0.2", "127.0.0.3"}, set[str]())


def test_a_and_aaaa_ipv4_first(server: DnsServer) -> None:
    res = run(make(server).resolve("reg.test"))
    assert res.name == "reg.test"
    assert by_family(res) == REG
    assert len(res.addresses) == 3
    assert res.source == "dns"
    assert res.ttl == 60  # the smaller of the two answers
    assert res.cnames == ()
    assert res.elapsed_ms > 0
    assert sorted(t for _, t, _ in server.query_log) == ["A", "AAAA"]


def test_ipv6_off_asks_only_for_a(server: DnsServer) -> None:
    res = run(make(server, ipv6=False).resolve("reg.test"))
    assert by_family(res) == REG_V4
    assert [t for _, t, _ in server.query_log] == ["A"]


def test_name_is_normalized(server: DnsServer) -> None:
    resolver = make(server, ipv6=False)
    assert run(resolver.resolve("REG.Test.")).name == "reg.test"
    assert run(resolver.resolve("reg.test")).source == "cache"


def test_cache_hit_then_expiry(server: DnsServer) -> None:
    clock = Clock()
    resolver = make(server, clock=clock)

    async def go() -> None:
        first = await resolver.resolve("reg.test")
        assert first.source == "dns" and server.queries == 2
        clock.now += 59
        again = await resolver.resolve("reg.test")
        assert again.source == "cache"
        # The very tuple: admission keeps its address checks by its identity.
        assert again.addresses is first.addresses
        assert again.ttl == pytest.approx(1)
        assert server.queries == 2
        clock.now += 1.5
        fresh = await resolver.resolve("reg.test")
        assert fresh.source == "dns"
        assert server.queries == 4

    asyncio.run(go())


def test_ttl_clamped_to_min_and_max(server: DnsServer) -> None:
    clock = Clock()
    resolver = make(server, clock=clock, min_ttl=5, max_ttl=300, ipv6=False)

    async def go() -> None:
        assert (await resolver.resolve("short.test")).ttl == 5  # TTL 1 raised to 5
        assert (await resolver.resolve("long.test")).ttl == 300  # TTL 86400 capped
        clock.now += 4
        assert (await resolver.resolve("short.test")).source == "cache"
        clock.now += 2
        assert (await resolver.resolve("short.test")).source == "dns"
        assert (await resolver.resolve("long.test")).source == "cache"
        clock.now += 295
        assert (await resolver.resolve("long.test")).source == "dns"

    asyncio.run(go())


def test_cname_chain_recorded_and_lowest_ttl_wins(server: DnsServer) -> None:
    res = run(make(server).resolve("alias.test"))
    assert res.cnames == ("hop.test", "reg.test")
    assert by_family(res) == REG
    assert res.ttl == 10
    cached = run(make(server).resolve("alias.test"))  # a fresh resolver: no cache
    assert cached.cnames == res.cnames


def test_nxdomain(server: DnsServer) -> None:
    err = failure(make(server), "nope.test")
    assert err.kind == "nxdomain"
    assert "nope.test" in str(err) and err.name == "nope.test"


def test_cname_to_nothing_is_nxdomain(server: DnsServer) -> None:
    assert failure(make(server), "dangling.test").kind == "nxdomain"


def test_negative_cache_nxdomain(server: DnsServer) -> None:
    clock = Clock()
    resolver = make(server, clock=clock, negative_ttl=5)
    assert failure(resolver, "nope.test").kind == "nxdomain"
    asked = server.queries
    assert asked >= 1
    clock.now += 4
    err = failure(resolver, "nope.test")
    assert err.kind == "nxdomain" and "cached" in str(err)
    assert server.queries == asked
    clock.now += 2
    assert failure(resolver, "nope.test").kind == "nxdomain"
    assert server.queries > asked


def test_no_data_is_no_answer_and_cached(server: DnsServer) -> None:
    clock = Clock()
    resolver = make(server, clock=clock)
    assert failure(resolver, "nodata.test").kind == "no_answer"
    assert server.queries == 2
    assert failure(resolver, "nodata.test").kind == "no_answer"
    assert server.queries == 2


def test_servfail_not_cached(server: DnsServer) -> None:
    server.fail("reg.test", "servfail")
    resolver = make(server)
    err = failure(resolver, "reg.test")
    assert err.kind == "servfail" and "reg.test" in str(err)
    asked = server.queries
    server.clear_failures()
    assert run(resolver.resolve("reg.test")).source == "dns"
    assert server.queries > asked


def test_refused_is_error(server: DnsServer) -> None:
    server.fail(None, "refused")
    assert failure(make(server), "reg.test").kind == "error"


def test_silent_server_times_out_within_bound(server: DnsServer) -> None:
    server.fail(None, "silent")
    resolver = make(server, timeout=0.4)
    started = time.monotonic()
    err = failure(resolver, "reg.test")
    took = time.monotonic() - started
    assert err.kind == "timeout"
    assert "reg.test" in str(err)
    assert 0.35 <= took < 0.7
    assert server.queries >= 2
    # A timeout is not an answer: nothing negative is cached.
    server.clear_failures()
    assert run(resolver.resolve("reg.test")).source == "dns"


def test_one_family_failing_keeps_the_other_briefly(server: DnsServer) -> None:
    server.fail("reg.test", "servfail", rtype="AAAA")
    clock = Clock()
    resolver = make(server, clock=clock, min_ttl=5)
    res = run(resolver.resolve("reg.test"))
    assert by_family(res) == REG_V4
    assert res.ttl == 5  # not the record's 60: ask again soon for the missing family
    clock.now += 6
    server.clear_failures()
    assert run(resolver.resolve("reg.test")).addresses[-1] == ip_address("fd00::2")


def test_silent_aaaa_bounded_and_a_kept(server: DnsServer) -> None:
    server.fail("reg.test", "silent", rtype="AAAA")
    started = time.monotonic()
    res = run(make(server, timeout=0.4).resolve("reg.test"))
    assert time.monotonic() - started < 0.7
    assert by_family(res) == REG_V4


def test_static_hosts_never_query(server: DnsServer) -> None:
    resolver = make(server, hosts={"reg.test": ["fd00::9", "127.0.0.9"], "x.test": ["10.1.1.1"]})
    res = run(resolver.resolve("reg.test"))
    assert res.source == "hosts"
    assert res.addresses == ips("127.0.0.9", "fd00::9")
    assert run(resolver.resolve("X.test.")).addresses == ips("10.1.1.1")
    assert server.queries == 0


def test_static_hosts_drop_ipv6_when_off(server: DnsServer) -> None:
    resolver = make(
        server, ipv6=False, hosts={"a.test": ["fd00::9", "127.0.0.9"], "b.test": ["::1"]}
    )
    assert run(resolver.resolve("a.test")).addresses == ips("127.0.0.9")
    assert failure(resolver, "b.test").kind == "no_answer"
    assert server.queries == 0


def test_ip_literal_is_not_queried(server: DnsServer) -> None:
    resolver = make(server)
    assert run(resolver.resolve("192.0.2.7")).addresses == ips("192.0.2.7")
    res = run(resolver.resolve("[2001:db8::1]"))
    assert res.addresses == ips("2001:db8::1") and res.source == "literal"
    assert server.queries == 0


def test_concurrent_lookups_share_one_query(server: DnsServer) -> None:
    server.delay = 0.2  # hold the query in flight while the others arrive
    resolver = make(server)

    async def go() -> list[Resolution]:
        return await asyncio.gather(*(resolver.resolve("reg.test") for _ in range(20)))

    results = asyncio.run(go())
    assert server.queries == 2  # one A, one AAAA
    assert len({r.addresses for r in results}) == 1  # the one shared answer
    assert by_family(results[0]) == REG


def test_cancelled_waiter_does_not_cancel_shared_query(server: DnsServer) -> None:
    server.delay = 0.2
    resolver = make(server)

    async def go() -> Resolution:
        quitter = asyncio.ensure_future(resolver.resolve("reg.test"))
        stayer = asyncio.ensure_future(resolver.resolve("reg.test"))
        await asyncio.sleep(0.05)
        quitter.cancel()
        res = await stayer
        assert quitter.cancelled()
        return res

    assert run(go()).source == "dns"
    assert server.queries == 2


def test_distinct_names_query_separately(server: DnsServer) -> None:
    resolver = make(server, ipv6=False)

    async def go() -> None:
        await asyncio.gather(resolver.resolve("reg.test"), resolver.resolve("v4only.test"))

    asyncio.run(go())
    assert sorted(n for n, _, _ in server.query_log) == ["reg.test", "v4only.test"]


def test_large_answer_falls_back_to_tcp(server: DnsServer) -> None:
    # 120 A records do not fit the 1232-byte EDNS payload the resolver offers.
    res = run(make(server, ipv6=False).resolve("big.test"))
    assert len(res.addresses) == 120
    assert [t for _, _, t in server.query_log] == ["udp", "tcp"]


def test_cached_and_clear(server: DnsServer) -> None:
    clock = Clock()
    resolver = make(server, clock=clock, hosts={"h.test": ["10.0.0.1"]})
    assert resolver.cached("reg.test") is None
    run(resolver.resolve("reg.test"))
    hit = resolver.cached("REG.test")
    assert hit is not None and hit.source == "cache" and hit.ttl == 60
    assert resolver.cached("h.test") is not None
    failure(resolver, "nope.test")
    assert resolver.cached("nope.test") is None  # a cached failure is not an answer
    resolver.clear()
    assert resolver.cached("reg.test") is None
    asked = server.queries
    run(resolver.resolve("reg.test"))
    assert server.queries == asked + 2
    clock.now += 61
    assert resolver.cached("reg.test") is None


def test_max_entries_evicts_least_recently_used(server: DnsServer) -> None:
    resolver = make(server, max_entries=2, ipv6=False)

    async def go() -> None:
        await resolver.resolve("reg.test")
        await resolver.resolve("v4only.test")
        await resolver.resolve("reg.test")  # touch: v4only is now the oldest
        await resolver.resolve("long.test")

    asyncio.run(go())
    assert resolver.cached("reg.test") is not None
    assert resolver.cached("long.test") is not None
    assert resolver.cached("v4only.test") is None


def test_ipv6_loopback_server() -> None:
    srv = DnsServer({"six.test": [Record("AAAA", "2001:db8::6", 60)]}, host="::1").start()
    try:
        assert srv.server.startswith("[::1]:")
        res = run(Resolver(servers=[srv.server]).resolve("six.test"))
        assert res.addresses == ips("2001:db8::6")
    finally:
        srv.stop()


@pytest.mark.parametrize(
    ("text", "expected"),
    [("127.0.0.1", ("127.0.0.1", 53)), ("127.0.0.1:5353", ("127.0.0.1", 5353)),
     ("[::1]:5353", ("::1", 5353)), ("[::1]", ("::1", 53)), ("::1", ("::1", 53)),
     ("fd00::53", ("fd00::53", 53))],
)  # fmt: skip
def test_parse_server(text: str, expected: tuple[str, int]) -> None:
    assert parse_server(text) == expected


@pytest.mark.parametrize("text", ["dns.example", "127.0.0.1:0", "127.0.0.1:70000", "[::1]x",
                                  "[::1", "1.2.3.4:x", ""])  # fmt: skip
def test_parse_server_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_server(text)
