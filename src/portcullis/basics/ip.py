"""IP address and network types, and the few conversions every layer needs."""

from __future__ import annotations

import functools
import ipaddress
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from portcullis.basics.memo import remember

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network


def parse_network(value: object) -> IPNetwork:
    """A CIDR, or a bare address meaning a single host; ValueError says what to write."""
    if isinstance(value, IPv4Network | IPv6Network):
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected a CIDR such as 10.240.0.0/24, got {value!r}")
    try:
        return ipaddress.ip_network(value.strip(), strict=True)
    except ValueError:
        pass
    try:
        loose = ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        raise ValueError(f"{value!r} is not a CIDR; write one such as 10.240.0.0/24") from None
    raise ValueError(f"{value!r} has host bits set; write {loose} (or the /{loose.max_prefixlen})")


def is_cidr(text: str) -> bool:
    try:
        parse_network(text)
    except ValueError:
        return False
    return True


def parse_address(value: object) -> IPAddress:
    """One IP address; ValueError names the text that is not one."""
    try:
        return ipaddress.ip_address(str(value).strip())
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address") from None


def unmap(addr: IPAddress) -> IPAddress:
    """The IPv4 address inside an IPv4-mapped IPv6 address; any other unchanged."""
    if isinstance(addr, IPv6Address):
        mapped = addr.ipv4_mapped
        if mapped is not None:
            return mapped
    return addr


@functools.lru_cache(maxsize=4096)
def peer_address(text: str) -> IPAddress:
    """A socket peer's address text as an object, IPv4-mapped unmapped, zone dropped.

    Cached: parsing it per connection showed in profiles, and clients
    reconnect from the same few addresses.
    """
    return unmap(ipaddress.ip_address(text.partition("%")[0]))


_TEXTS: dict[int, tuple[IPAddress, str]] = {}


def address_text(address: IPAddress) -> str:
    """str(address), remembered by the object: ipaddress formats in Python (about
    8,000 instructions), and the resolver hands out the same address objects
    for a name on every connection to it. An entry holds its object, so the id
    cannot be reused while it stands."""
    hit = _TEXTS.get(id(address))
    if hit is not None and hit[0] is address:
        return hit[1]
    return remember(_TEXTS, id(address), (address, str(address)), 4096)[1]
