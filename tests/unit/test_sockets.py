"""SO_ORIGINAL_DST / IP6T_SO_ORIGINAL_DST: the parser on bytes, the option on real
redirects (nftables `redirect` on the output hook, in a namespace of the test's own)."""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Iterator

import pytest
from tests.support.netns import Namespaces, inside, namespaces

from portcullis.basics.errors import NoOriginalDestination
from portcullis.net.sockets import format_endpoint, local_endpoint, original_dst, parse_sockaddr

RULES = """
table inet t {
    chain out {
        type nat hook output priority -100; policy accept;
        tcp dport 443 redirect to :3129
    }
}
"""


def sockaddr_in(address: str, port: int) -> bytes:
    # sa_family in host order, port and address in network order, 8 bytes of padding.
    packed = socket.inet_aton(address)
    return struct.pack("=H", socket.AF_INET) + struct.pack("!H4s", port, packed) + bytes(8)


def sockaddr_in6(address: str, port: int, flowinfo: int = 0, scope: int = 0) -> bytes:
    packed = socket.inet_pton(socket.AF_INET6, address)
    body = struct.pack("!HI16s", port, flowinfo, packed)
    return struct.pack("=H", socket.AF_INET6) + body + struct.pack("=I", scope)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (sockaddr_in("104.18.10.7", 443), ("104.18.10.7", 443)),
        (sockaddr_in("0.0.0.0", 1), ("0.0.0.0", 1)),
        (sockaddr_in("255.255.255.255", 65535), ("255.255.255.255", 65535)),
        (sockaddr_in6("2606:4700::6812:a07", 443, flowinfo=7, scope=3),
         ("2606:4700::6812:a07", 443)),
        (sockaddr_in6("::ffff:10.1.2.3", 80), ("::ffff:10.1.2.3", 80)),
    ],
    ids=["v4", "v4-zero", "v4-max", "v6-flow-scope", "v6-mapped"],
)
def test_parse_sockaddr(raw: bytes, expected: tuple[str, int]) -> None:
    assert parse_sockaddr(raw) == (ipaddress.ip_address(expected[0]), expected[1])


@pytest.mark.parametrize(
    "raw",
    [b"", b"\x02", sockaddr_in("1.2.3.4", 443)[:7], sockaddr_in6("::1", 443)[:23],
     struct.pack("=H", socket.AF_UNIX) + bytes(14)],
    ids=["empty", "family-only", "short-v4", "short-v6", "unix"],
)
def test_parse_sockaddr_refuses_short_or_foreign(raw: bytes) -> None:
    with pytest.raises(ValueError):
        parse_sockaddr(raw)


def test_format_endpoint() -> None:
    assert format_endpoint((ipaddress.ip_address("2001:db8::1"), 443)) == "[2001:db8::1]:443"
    assert format_endpoint((ipaddress.ip_address("10.0.0.1"), 80)) == "10.0.0.1:80"


@pytest.fixture(scope="module")
def redirecting() -> Iterator[Namespaces]:
    """A namespace whose own TCP 443 is redirected to local port 3129."""
    with namespaces("sock") as ns:
        ns.address("sock", "lo", "fd00:231::1/64")
        ns.exec("sock", ["nft", "-f", "-"], input=RULES)
        yield ns


def _accept_one(listener: socket.socket, client: socket.socket, target: tuple[str, int]
                ) -> socket.socket:
    client.settimeout(5)
    client.connect(target)
    listener.settimeout(5)
    conn, _ = listener.accept()
    return conn


@pytest.mark.privileged  # a network namespace of its own
@pytest.mark.parametrize(
    ("listen_family", "client_family", "target", "expected"),
    [
        (socket.AF_INET, socket.AF_INET, ("127.0.0.9", 443), "127.0.0.9:443"),
        (socket.AF_INET6, socket.AF_INET6, ("fd00:231::9", 443), "[fd00:231::9]:443"),
        # An IPv4 client on a dual-stack listener: the v4 option answers, unmapped.
        (socket.AF_INET6, socket.AF_INET, ("127.0.0.9", 443), "127.0.0.9:443"),
    ],
)
def test_original_dst_of_a_redirected_connection(
    redirecting: Namespaces, listen_family: int, client_family: int,
    target: tuple[str, int], expected: str,
) -> None:
    with inside(redirecting.sock):
        listener = socket.socket(listen_family, socket.SOCK_STREAM)
        client = socket.socket(client_family, socket.SOCK_STREAM)
    with listener, client:
        if listen_family == socket.AF_INET6:
            listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("::" if listen_family == socket.AF_INET6 else "0.0.0.0", 3129))
        listener.listen()
        with _accept_one(listener, client, target) as conn:
            assert format_endpoint(original_dst(conn)) == expected
            assert local_endpoint(conn)[1] == 3129


@pytest.mark.privileged  # a network namespace of its own
def test_a_connection_that_was_not_redirected_reports_the_listener_itself(
    redirecting: Namespaces,
) -> None:
    with inside(redirecting.sock):
        listener = socket.socket()
        client = socket.socket()
    with listener, client:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 3129))
        listener.listen()
        with _accept_one(listener, client, ("127.0.0.1", 3129)) as conn:
            assert original_dst(conn) == local_endpoint(conn)


@pytest.mark.privileged  # a network namespace of its own
def test_no_conntrack_entry_is_no_original_destination() -> None:
    # A fresh namespace with no NAT hook has no conntrack entries to ask.
    with namespaces("bare") as ns:
        with inside(ns.bare):
            listener = socket.socket()
            client = socket.socket()
        with listener, client:
            listener.bind(("127.0.0.1", 0))
            listener.listen()
            with (_accept_one(listener, client, listener.getsockname()) as conn,
                  pytest.raises(NoOriginalDestination)):
                original_dst(conn)
