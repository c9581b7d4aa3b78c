"""Address classification and admission (docs/semantics.md §3)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network

import pytest
from hypothesis import given
from hypothesis import strategies as st

from portcullis.basics.ip import IPAddress, IPNetwork, unmap
from portcullis.net.addresses import AddressClass, check_addresses, classify

C = AddressClass


def a(text: str) -> IPAddress:
    return ip_address(text)


def nets(*texts: str) -> list[IPNetwork]:
    return [ip_network(t) for t in texts]


CLASS_TABLE: list[tuple[str, AddressClass]] = [
    # IPv4 boundaries, each side of every special range that matters.
    ("0.0.0.0", C.UNSPECIFIED),
    ("0.0.0.1", C.RESERVED),
    ("0.255.255.255", C.RESERVED),
    ("1.0.0.0", C.PUBLIC),
    ("9.255.255.255", C.PUBLIC),
    ("10.0.0.0", C.PRIVATE),
    ("10.0.0.1", C.PRIVATE),
    ("10.255.255.255", C.PRIVATE),
    ("11.0.0.0", C.PUBLIC),
    ("100.63.255.255", C.PUBLIC),
    ("100.64.0.0", C.CGNAT),
    ("100.127.255.255", C.CGNAT),
    ("100.128.0.0", C.PUBLIC),
    ("126.255.255.255", C.PUBLIC),
    ("127.0.0.1", C.LOOPBACK),
    ("127.255.255.254", C.LOOPBACK),
    ("128.0.0.0", C.PUBLIC),
    ("169.253.255.255", C.PUBLIC),
    ("169.254.0.0", C.LINK_LOCAL),
    ("169.254.169.254", C.LINK_LOCAL),
    ("169.255.0.0", C.PUBLIC),
    ("172.15.255.255", C.PUBLIC),
    ("172.16.0.0", C.PRIVATE),
    ("172.31.255.255", C.PRIVATE),
    ("172.32.0.1", C.PUBLIC),
    ("192.0.0.1", C.RESERVED),
    ("192.0.0.170", C.RESERVED),
    ("192.0.1.0", C.PUBLIC),
    ("192.0.2.1", C.RESERVED),
    ("192.88.99.1", C.RESERVED),
    ("192.167.255.255", C.PUBLIC),
    ("192.168.0.0", C.PRIVATE),
    ("192.168.255.255", C.PRIVATE),
    ("192.169.0.0", C.PUBLIC),
    ("198.17.255.255", C.PUBLIC),
    ("198.18.0.0", C.RESERVED),
    ("198.19.255.255", C.RESERVED),
    ("198.20.0.0", C.PUBLIC),
    ("198.51.100.7", C.RESERVED),
    ("203.0.113.9", C.RESERVED),
    ("203.0.114.0", C.PUBLIC),
    ("223.255.255.255", C.PUBLIC),
    ("224.0.0.0", C.MULTICAST),
    ("239.255.255.255", C.MULTICAST),
    ("240.0.0.0", C.RESERVED),
    ("255.255.255.255", C.RESERVED),
    ("8.8.8.8", C.PUBLIC),
    # IPv6.
    ("::", C.UNSPECIFIED),
    ("::1", C.LOOPBACK),
    ("::2", C.RESERVED),
    ("::7f00:1", C.RESERVED),  # deprecated IPv4-compatible form of 127.0.0.1
    ("::ffff:127.0.0.1", C.LOOPBACK),
    ("::ffff:169.254.169.254", C.LINK_LOCAL),
    ("::ffff:10.1.2.3", C.PRIVATE),
    ("::ffff:0.0.0.0", C.UNSPECIFIED),
    ("::ffff:8.8.8.8", C.PUBLIC),
    ("64:ff9b::7f00:1", C.IPV4_EMBEDDED),
    ("64:ff9b::808:808", C.IPV4_EMBEDDED),
    ("64:ff9b:1::1", C.IPV4_EMBEDDED),
    ("64:ff9b:1:ffff:ffff:ffff:ffff:ffff", C.IPV4_EMBEDDED),
    ("64:ff9b:2::1", C.RESERVED),  # outside 2000::/3, unallocated
    ("100::1", C.RESERVED),
    ("1fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", C.RESERVED),
    ("2000::", C.PUBLIC),
    ("2001::1", C.IPV4_EMBEDDED),
    ("2001:0:ffff:ffff:ffff:ffff:ffff:ffff", C.IPV4_EMBEDDED),
    ("2001:1::1", C.RESERVED),
    ("2001:2::1", C.RESERVED),
    ("2001:1ff:ffff:ffff:ffff:ffff:ffff:ffff", C.RESERVED),
    ("2001:200::1", C.PUBLIC),
    ("2001:db7:ffff:ffff:ffff:ffff:ffff:ffff", C.PUBLIC),
    ("2001:db8::1", C.RESERVED),
    ("2001:db9::", C.PUBLIC),
    ("2001:4860:4860::8888", C.PUBLIC),
    ("2001:ffff:ffff:ffff:ffff:ffff:ffff:ffff", C.PUBLIC),
    ("2002::1", C.IPV4_EMBEDDED),
    ("2002:7f00:1::", C.IPV4_EMBEDDED),
    ("2002:ffff:ffff:ffff:ffff:ffff:ffff:ffff", C.IPV4_EMBEDDED),
    ("2003::1", C.PUBLIC),
    ("2606:4700:4700::1111", C.PUBLIC),
    ("3ffe:ffff::1", C.PUBLIC),
    ("3fff::1", C.RESERVED),
    ("3fff:fff::1", C.RESERVED),
    ("3fff:1000::1", C.PUBLIC),
    ("4000::1", C.RESERVED),
    ("5f00::1", C.RESERVED),
    ("fbff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", C.RESERVED),
    ("fc00::", C.PRIVATE),
    ("fd00::1", C.PRIVATE),
    ("fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", C.PRIVATE),
    ("fe00::1", C.RESERVED),
    ("fe7f:ffff:ffff:ffff:ffff:ffff:ffff:ffff", C.RESERVED),
    ("fe80::", C.LINK_LOCAL),
    ("fe80::1", C.LINK_LOCAL),
    ("febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff", C.LINK_LOCAL),
    ("fec0::1", C.PRIVATE),
    ("ff02::1", C.MULTICAST),
    ("ff00::", C.MULTICAST),
    ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", C.MULTICAST),
]


@pytest.mark.parametrize(("text", "expected"), CLASS_TABLE)
def test_classify_table(text: str, expected: AddressClass) -> None:
    assert classify(a(text)) is expected


def test_every_class_but_proxy_own_is_in_the_table() -> None:
    seen = {klass for _, klass in CLASS_TABLE}
    assert seen == set(AddressClass) - {C.PROXY_OWN}


def test_proxy_own_wins_over_any_other_class() -> None:
    own = {a("127.0.0.1"), a("10.0.0.5"), a("2001:4860::1")}
    assert classify(a("127.0.0.1"), own) is C.PROXY_OWN
    assert classify(a("10.0.0.5"), own) is C.PROXY_OWN
    assert classify(a("2001:4860::1"), own) is C.PROXY_OWN
    # Only the listed addresses, not their neighbours.
    assert classify(a("127.0.0.2"), own) is C.LOOPBACK
    assert classify(a("10.0.0.6"), own) is C.PRIVATE


def test_mapped_form_of_own_address_is_own() -> None:
    assert classify(a("::ffff:10.0.0.5"), [a("10.0.0.5")]) is C.PROXY_OWN


def test_unmap() -> None:
    assert unmap(a("::ffff:1.2.3.4")) == IPv4Address("1.2.3.4")
    assert unmap(a("2001:db8::1")) == IPv6Address("2001:db8::1")
    assert unmap(a("1.2.3.4")) == IPv4Address("1.2.3.4")


# Cross-check against the standard library's registry of special addresses: we
# never call an address public that Python knows is not globally reachable.
@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_public_v4_is_global_per_stdlib(value: int) -> None:
    addr = IPv4Address(value)
    if classify(addr) is C.PUBLIC:
        assert addr.is_global and not addr.is_multicast


@given(st.integers(min_value=0, max_value=2**128 - 1))
def test_public_v6_is_global_per_stdlib(value: int) -> None:
    addr = IPv6Address(value)
    if classify(addr) is C.PUBLIC:
        assert addr.is_global and not addr.is_multicast
        assert addr in ip_network("2000::/3")


@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_mapped_v4_classifies_like_v4(value: int) -> None:
    v4 = IPv4Address(value)
    assert classify(IPv6Address(f"::ffff:{v4}")) is classify(v4)


# --- admission -----------------------------------------------------------------


def test_public_admitted_by_default() -> None:
    [v] = check_addresses([a("8.8.8.8")])
    assert v.allowed and v.klass is C.PUBLIC and not v.outside_resolves_to
    assert v.why == "public"


@pytest.mark.parametrize(
    "text",
    ["127.0.0.1", "169.254.169.254", "10.0.0.1", "100.64.0.1", "::ffff:127.0.0.1",
     "64:ff9b::7f00:1", "2002::1", "2001::1", "fd00::1", "fe80::1", "224.0.0.1",
     "0.0.0.0", "::", "240.0.0.1"],
)  # fmt: skip
def test_non_public_refused_by_default(text: str) -> None:
    [v] = check_addresses([a(text)])
    assert not v.allowed
    assert not v.outside_resolves_to
    assert "not admitted by allow_ranges or resolves_to" in v.why


def test_why_names_class_and_range() -> None:
    [v] = check_addresses([a("169.254.169.254")])
    assert v.why == "link_local (169.254.0.0/16), not admitted by allow_ranges or resolves_to"
    [v] = check_addresses([a("::ffff:127.0.0.1")])
    assert v.why.startswith("loopback (127.0.0.0/8)")
    [v] = check_addresses([a("4000::1")])
    assert v.why.startswith("reserved,")


def test_allow_ranges_admit_only_inside() -> None:
    ranges = nets("10.1.0.0/16", "fd00:1::/32")
    inside, outside, v6_in, v6_out = check_addresses(
        [a("10.1.2.3"), a("10.2.0.1"), a("fd00:1::5"), a("fd00:2::5")],
        allow_ranges=ranges,
    )
    assert inside.allowed and inside.klass is C.PRIVATE
    assert inside.why == "private (10.0.0.0/8), admitted by allow_ranges 10.1.0.0/16"
    assert not outside.allowed and not outside.outside_resolves_to
    assert v6_in.allowed and not v6_out.allowed


def test_allow_ranges_apply_to_mapped_form() -> None:
    [v] = check_addresses([a("::ffff:10.1.2.3")], allow_ranges=nets("10.1.0.0/16"))
    assert v.allowed


def test_allow_ranges_never_admit_proxy_own() -> None:
    own = [a("127.0.0.1")]
    [v] = check_addresses([a("127.0.0.1")], allow_ranges=nets("127.0.0.0/8"), own=own)
    assert not v.allowed and v.klass is C.PROXY_OWN
    assert "admitted only by resolves_to" in v.why
    # A neighbour on loopback is still admissible.
    [n] = check_addresses([a("127.0.0.2")], allow_ranges=nets("127.0.0.0/8"), own=own)
    assert n.allowed and n.klass is C.LOOPBACK


def test_public_own_address_refused() -> None:
    [v] = check_addresses([a("8.8.8.8")], own=[a("8.8.8.8")])
    assert not v.allowed and v.klass is C.PROXY_OWN


def test_resolves_to_vouches_for_any_class() -> None:
    own = [a("127.0.0.1")]
    got = check_addresses(
        [a("169.254.169.254"), a("127.0.0.1"), a("10.9.9.9")],
        resolves_to=nets("169.254.169.254/32", "127.0.0.1/32", "10.0.0.0/8"),
        own=own,
    )
    assert [v.allowed for v in got] == [True, True, True]
    assert got[0].why == "link_local (169.254.0.0/16), inside resolves_to 169.254.169.254/32"
    assert got[1].klass is C.PROXY_OWN


def test_resolves_to_refuses_outside_even_when_public() -> None:
    inside, outside = check_addresses(
        [a("192.0.2.10"), a("8.8.8.8")], resolves_to=nets("192.0.2.0/24")
    )
    assert inside.allowed
    assert not outside.allowed and outside.outside_resolves_to
    assert outside.why == "public, outside resolves_to (192.0.2.0/24)"


def test_resolves_to_overrides_allow_ranges() -> None:
    [v] = check_addresses(
        [a("10.0.0.1")], allow_ranges=nets("10.0.0.0/8"), resolves_to=nets("192.0.2.0/24")
    )
    assert not v.allowed and v.outside_resolves_to


def test_empty_resolves_to_admits_nothing() -> None:
    [v] = check_addresses([a("8.8.8.8")], resolves_to=[])
    assert not v.allowed and v.outside_resolves_to
    assert "outside resolves_to (nothing)" in v.why


def test_verdicts_preserve_order_and_length() -> None:
    addrs = [a("8.8.8.8"), a("10.0.0.1"), a("::1"), a("2606:4700::1")]
    got = check_addresses(addrs)
    assert [v.address for v in got] == addrs
    assert [v.allowed for v in got] == [True, False, False, True]
