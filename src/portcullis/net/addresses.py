"""Classification and admission of resolved addresses (docs/semantics.md §3).

A name that passed the policy may still resolve to somewhere the proxy must not
dial: loopback, the cloud metadata service, the inside network, or an IPv6
address that smuggles an IPv4 one. Every candidate address is classified, and
only a public address, or one a rule's `resolves_to` or the global
`allow_ranges` vouches for, is admitted. The admitted address is the one that is
dialled; there is no second lookup.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from ipaddress import IPv6Network, ip_network

from portcullis.basics.ip import IPAddress, IPNetwork, unmap


class AddressClass(StrEnum):
    PUBLIC = "public"
    LOOPBACK = "loopback"
    UNSPECIFIED = "unspecified"
    LINK_LOCAL = "link_local"
    PRIVATE = "private"
    CGNAT = "cgnat"
    MULTICAST = "multicast"
    RESERVED = "reserved"
    IPV4_EMBEDDED = "ipv4_embedded"
    PROXY_OWN = "proxy_own"


_C = AddressClass

# Special-purpose ranges (IANA registries, RFC 6890 and successors). Overlaps are
# fine: the most specific prefix wins, so 0.0.0.0/32 is unspecified while the
# rest of 0.0.0.0/8 is reserved.
_V4_SPECIAL: tuple[tuple[str, AddressClass], ...] = (
    ("0.0.0.0/32", _C.UNSPECIFIED),
    ("0.0.0.0/8", _C.RESERVED),  # "this network"; Linux routes 0.x to the host itself
    ("10.0.0.0/8", _C.PRIVATE),
    ("100.64.0.0/10", _C.CGNAT),
    ("127.0.0.0/8", _C.LOOPBACK),
    ("169.254.0.0/16", _C.LINK_LOCAL),  # includes 169.254.169.254, cloud metadata
    ("172.16.0.0/12", _C.PRIVATE),
    ("192.0.0.0/24", _C.RESERVED),  # IETF protocol assignments (DS-Lite, NAT64 discovery)
    ("192.0.2.0/24", _C.RESERVED),  # TEST-NET-1
    ("192.88.99.0/24", _C.RESERVED),  # deprecated 6to4 relay anycast
    ("192.168.0.0/16", _C.PRIVATE),
    ("198.18.0.0/15", _C.RESERVED),  # benchmarking
    ("198.51.100.0/24", _C.RESERVED),  # TEST-NET-2
    ("203.0.113.0/24", _C.RESERVED),  # TEST-NET-3
    ("224.0.0.0/4", _C.MULTICAST),
    ("240.0.0.0/4", _C.RESERVED),  # future use, and 255.255.255.255 broadcast
)

_V6_SPECIAL: tuple[tuple[str, AddressClass], ...] = (
    ("::/128", _C.UNSPECIFIED),
    ("::1/128", _C.LOOPBACK),
    # ::ffff:0:0/96 (IPv4-mapped) never reaches the table: it is classified by
    # the IPv4 address it carries, because a dual-stack socket dials exactly that.
    ("::/8", _C.RESERVED),  # includes deprecated IPv4-compatible ::a.b.c.d
    ("64:ff9b::/96", _C.IPV4_EMBEDDED),  # NAT64 well-known prefix
    ("64:ff9b:1::/48", _C.IPV4_EMBEDDED),  # NAT64 local-use prefix
    ("100::/64", _C.RESERVED),  # discard-only
    ("2001::/23", _C.RESERVED),  # IETF protocol assignments (ORCHID, benchmarking...)
    ("2001::/32", _C.IPV4_EMBEDDED),  # Teredo
    ("2001:db8::/32", _C.RESERVED),  # documentation
    ("2002::/16", _C.IPV4_EMBEDDED),  # 6to4
    ("3fff::/20", _C.RESERVED),  # documentation (RFC 9637)
    ("5f00::/16", _C.RESERVED),  # SRv6 SIDs
    ("fc00::/7", _C.PRIVATE),  # unique local
    ("fe80::/10", _C.LINK_LOCAL),
    ("fec0::/10", _C.PRIVATE),  # deprecated site-local, the predecessor of ULA
    ("ff00::/8", _C.MULTICAST),
)

# Outside 2000::/3 nothing is allocated for global unicast, so an address there
# that no special range names is reserved rather than public.
_V6_GLOBAL_UNICAST = IPv6Network("2000::/3")
_V6_UNALLOCATED = (_C.RESERVED, IPv6Network("::/0"))

_Match = tuple[AddressClass, IPNetwork]
# One dict per prefix length, longest first: a lookup is a handful of shifts and
# dict probes instead of a scan over network objects.
_Table = tuple[tuple[int, dict[int, _Match]], ...]


def _compile(entries: Iterable[tuple[str, AddressClass]], bits: int) -> _Table:
    by_len: dict[int, dict[int, _Match]] = {}
    for text, klass in entries:
        net = ip_network(text)
        shift = bits - net.prefixlen
        by_len.setdefault(net.prefixlen, {})[int(net.network_address) >> shift] = (klass, net)
    return tuple((bits - plen, by_len[plen]) for plen in sorted(by_len, reverse=True))


_V4_TABLE = _compile(_V4_SPECIAL, 32)
_V6_TABLE = _compile(_V6_SPECIAL, 128)


def _lookup(table: _Table, value: int) -> _Match | None:
    for shift, prefixes in table:
        hit = prefixes.get(value >> shift)
        if hit is not None:
            return hit
    return None


def _classify(addr: IPAddress, own: Collection[IPAddress]) -> tuple[AddressClass, IPNetwork | None]:
    effective = unmap(addr)
    if own and (addr in own or effective in own):
        return _C.PROXY_OWN, None
    if effective.version == 4:
        hit = _lookup(_V4_TABLE, int(effective))
        return hit if hit is not None else (_C.PUBLIC, None)
    hit = _lookup(_V6_TABLE, int(effective))
    if hit is not None:
        return hit
    if effective in _V6_GLOBAL_UNICAST:
        return _C.PUBLIC, None
    return _V6_UNALLOCATED


def classify(addr: IPAddress, own: Collection[IPAddress] = ()) -> AddressClass:
    """The class of `addr`; `own` holds the proxy's concrete listen addresses."""
    return _classify(addr, own)[0]


@dataclass(frozen=True, slots=True)
class AddressVerdict:
    address: IPAddress
    klass: AddressClass
    allowed: bool
    why: str
    # True when the refusal is "not inside the rule's resolves_to" (reason
    # `resolves_outside`) rather than "a forbidden class" (`address_forbidden`).
    outside_resolves_to: bool = False


def _inside(addr: IPAddress, nets: Sequence[IPNetwork]) -> IPNetwork | None:
    effective = unmap(addr)
    for net in nets:
        # A CIDR of the other family never contains the address (no exception).
        if addr in net or effective in net:
            return net
    return None


def _describe(klass: AddressClass, net: IPNetwork | None) -> str:
    if klass is _C.PROXY_OWN:
        return "proxy_own (a listen address of this proxy)"
    if net is None or net.prefixlen == 0:
        return klass.value
    return f"{klass.value} ({net})"


def _verdict(
    addr: IPAddress,
    allow_ranges: Sequence[IPNetwork],
    resolves_to: Sequence[IPNetwork] | None,
    own: Collection[IPAddress],
) -> AddressVerdict:
    klass, special = _classify(addr, own)
    what = _describe(klass, special)
    if resolves_to is not None:
        # The rule's author named where this name lives; that vouches for any
        # class, and anything else is refused even when public.
        vouched = _inside(addr, resolves_to)
        if vouched is not None:
            return AddressVerdict(addr, klass, True, f"{what}, inside resolves_to {vouched}")
        listed = ", ".join(str(n) for n in resolves_to) or "nothing"
        why = f"{what}, outside resolves_to ({listed})"
        return AddressVerdict(addr, klass, False, why, outside_resolves_to=True)
    if klass is _C.PUBLIC:
        return AddressVerdict(addr, klass, True, "public")
    if klass is _C.PROXY_OWN:
        # Dialling ourselves loops the proxy; only an explicit resolves_to may.
        return AddressVerdict(addr, klass, False, f"{what}, admitted only by resolves_to")
    admitted = _inside(addr, allow_ranges)
    if admitted is not None:
        return AddressVerdict(addr, klass, True, f"{what}, admitted by allow_ranges {admitted}")
    return AddressVerdict(
        addr, klass, False, f"{what}, not admitted by allow_ranges or resolves_to"
    )


def check_addresses(
    addresses: Sequence[IPAddress],
    *,
    allow_ranges: Sequence[IPNetwork] = (),
    resolves_to: Sequence[IPNetwork] | None = None,
    own: Collection[IPAddress] = (),
) -> list[AddressVerdict]:
    """One verdict per address, in order.

    With `resolves_to` (a rule's CIDRs) an address is admitted exactly when it
    lies inside one of them, whatever its class. Without it a public address is
    admitted, and any other only inside an `allow_ranges` CIDR; the proxy's own
    addresses never are.
    """
    return [_verdict(a, allow_ranges, resolves_to, own) for a in addresses]

