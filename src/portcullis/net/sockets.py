"""Socket facts the kernel keeps for a redirected connection (docs/architecture.md).

An nftables/iptables `redirect` (or `dnat`) rewrites a connection's destination
before the proxy accepts it; conntrack remembers the address the client meant,
and `SO_ORIGINAL_DST` (IPv4) / `IP6T_SO_ORIGINAL_DST` (IPv6) read it back.
The parsers take bytes, so they are tested without any redirect in place.
"""

from __future__ import annotations

import ipaddress
import socket
import struct

from portcullis.basics.errors import NoOriginalDestination
from portcullis.basics.hostport import format_hostport
from portcullis.basics.ip import IPAddress, unmap

# Outbound sockets carry this mark so a same-host nftables redirect can exempt
# the proxy's own traffic (see `portcullis nftables`).
SOCKET_MARK = 0x504C  # "PL"
# linux/netfilter_ipv4.h and linux/netfilter_ipv6/ip6_tables.h; Python's socket
# module does not export them.
SO_ORIGINAL_DST = 80
IP6T_SO_ORIGINAL_DST = 80
SOL_IPV6 = 41

_SOCKADDR_IN = 16  # family, port, 4-byte address, 8 bytes of zero padding
_SOCKADDR_IN6 = 28  # family, port, flowinfo, 16-byte address, scope id

Endpoint = tuple[IPAddress, int]


def parse_sockaddr(raw: bytes) -> Endpoint:
    """Address and port of a `struct sockaddr_in` or `sockaddr_in6` as the kernel wrote it."""
    if len(raw) < 2:
        raise ValueError(f"sockaddr of {len(raw)} bytes is too short")
    # sa_family is in host byte order; the port and address are in network order.
    (family,) = struct.unpack("=H", raw[:2])
    if family == socket.AF_INET:
        if len(raw) < 8:
            raise ValueError(f"sockaddr_in of {len(raw)} bytes is too short")
        port, packed = struct.unpack("!H4s", raw[2:8])
        return ipaddress.IPv4Address(packed), port
    if family == socket.AF_INET6:
        if len(raw) < 24:
            raise ValueError(f"sockaddr_in6 of {len(raw)} bytes is too short")
        port, _flowinfo, packed = struct.unpack("!HI16s", raw[2:24])
        return ipaddress.IPv6Address(packed), port
    raise ValueError(f"sockaddr family {family} is neither AF_INET nor AF_INET6")


def local_endpoint(sock: socket.socket) -> Endpoint:
    name = sock.getsockname()
    return unmap(ipaddress.ip_address(str(name[0]).partition("%")[0])), int(name[1])


def original_dst(sock: socket.socket) -> Endpoint:
    """Where the client meant to connect before a redirect; NoOriginalDestination if unknown.

    IPv4 clients accepted on a dual-stack IPv6 listener arrive as v4-mapped
    addresses; conntrack tracked them as IPv4, so the IPv4 option answers.
    """
    ipv4 = sock.family == socket.AF_INET or local_endpoint(sock)[0].version == 4
    level, option, size = (
        (socket.SOL_IP, SO_ORIGINAL_DST, _SOCKADDR_IN)
        if ipv4
        else (SOL_IPV6, IP6T_SO_ORIGINAL_DST, _SOCKADDR_IN6)
    )
    try:
        raw = sock.getsockopt(level, option, size)
    except OSError as exc:
        raise NoOriginalDestination(exc.errno, f"no original destination: {exc.strerror}") from exc
    return parse_sockaddr(raw)


def format_endpoint(endpoint: Endpoint) -> str:
    return format_hostport(*endpoint)


def is_local_address(address: IPAddress) -> bool:
    """Whether `address` is one of this host's own (bindable here)."""
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((str(address), 0))
        except OSError:
            return False
    return True
