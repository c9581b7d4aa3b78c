"""NO_PROXY as Go's golang.org/x/net/http/httpproxy reads it.

The cases are the facts of httpproxy's own tests (proxy_test.go:
UseProxyTests with its noProxy list, TestAllNoProxy, TestInvalidNoProxy and
the NoProxy rows of proxyForURLTests), as (NO_PROXY, host, port, direct?),
plus the entry that `bypass` names and the ports the Go table leaves implicit.
"""

from __future__ import annotations

import ssl

import pytest

from portcullis.tools.netprobe import Route, parse_proxy
from portcullis.tools.noproxy import NoProxy

# httpproxy's `noProxy` for UseProxyTests (every host is asked on port 80).
GO_LIST = ("foobar.com, .barbaz.net, *.wildcard.io, 192.168.1.1, 192.168.1.2:81, "
           "192.168.1.3:80, 10.0.0.0/30, 2001:db8::52:0:1, [2001:db8::52:0:2]:443, "
           "[2001:db8::52:0:3]:80, 2002:db8:a::45/64")

# (host, direct): httpproxy's `match` column is "uses the proxy", inverted here.
USE_PROXY_TESTS = [
    ("localhost", True),
    ("127.0.0.1", True),
    ("127.0.0.2", True),
    ("[::1]", True),
    ("[::2]", False),  # not a loopback address
    ("192.168.1.1", True),  # matches exact IPv4
    ("192.168.1.2", False),  # ports do not match
    ("192.168.1.3", True),  # matches exact IPv4:port
    ("192.168.1.4", False),  # no match
    ("10.0.0.2", True),  # matches IPv4/CIDR
    ("[2001:db8::52:0:1]", True),  # matches exact IPv6
    ("[2001:db8::52:0:2]", False),  # no match (port 443 only)
    ("[2001:db8::52:0:3]", True),  # matches exact [IPv6]:port
    ("[2002:db8:a::123]", True),  # matches IPv6/CIDR
    ("[fe80::424b:c8be:1643:a1b6]", False),  # no match
    ("barbaz.net", False),  # does not match as .barbaz.net
    ("www.barbaz.net", True),  # does match as .barbaz.net
    ("foobar.com", True),  # does match as foobar.com
    ("www.foobar.com", True),  # match because NO_PROXY includes "foobar.com"
    ("foofoobar.com", False),  # not match as a part of foobar.com
    ("baz.com", False),  # not match as a part of barbaz.com
    ("localhost.net", False),  # not match as suffix of address
    ("local.localhost", False),  # not match as prefix as address
    ("barbarbaz.net", False),  # not match, wrong domain
    ("wildcard.io", False),  # does not match as *.wildcard.io
    ("nested.wildcard.io", True),  # match as *.wildcard.io
    ("awildcard.io", False),  # not a match because of '*'
]


@pytest.mark.parametrize(("host", "direct"), USE_PROXY_TESTS)
def test_httpproxy_use_proxy_table(host: str, direct: bool) -> None:
    assert (NoProxy.parse(GO_LIST).bypass(host, 80) is not None) is direct


@pytest.mark.parametrize(("host", "_direct"), USE_PROXY_TESTS)
def test_httpproxy_star_sends_everything_direct(host: str, _direct: bool) -> None:
    assert NoProxy.parse("*").bypass(host, 80) is not None


def test_httpproxy_entry_without_a_host_is_ignored() -> None:
    assert NoProxy.parse(":1").bypass("example.com", 80) is None


# The NoProxy rows of httpproxy's proxyForURLTests: (NO_PROXY, URL host, port, direct).
@pytest.mark.parametrize(
    ("no_proxy", "host", "port", "direct"),
    [
        ("example.com", "example.com", 80, True),
        (".example.com", "example.com", 80, False),
        ("ample.com", "example.com", 80, False),
        ("example.com", "foo.example.com", 80, True),
        (".foo.com", "example.com", 80, False),
        (".示例.com", "www.示例.com", 80, True),
        ("xn--fsq092h.com", "www.示例.com", 80, True),
        ("示例.com", "www.xn--fsq092h.com", 80, True),
        # A zone that looks like a name is still an IPv6 literal: no domain match.
        ("example.com", "[1000::%.example.com]", 123, False),
    ],
)
def test_httpproxy_proxy_for_url_rows(no_proxy: str, host: str, port: int, direct: bool) -> None:
    assert (NoProxy.parse(no_proxy).bypass(host, port) is not None) is direct


@pytest.mark.parametrize(
    ("no_proxy", "host", "port", "entry"),
    [
        (GO_LIST, "www.barbaz.net", 443, ".barbaz.net"),
        (GO_LIST, "nested.wildcard.io", 443, "*.wildcard.io"),
        (GO_LIST, "192.168.1.3", 443, None),  # the entry names port 80
        (GO_LIST, "2001:db8::52:0:2", 443, "[2001:db8::52:0:2]:443"),
        (GO_LIST, "10.0.0.3", 443, "10.0.0.0/30"),
        (GO_LIST, "10.0.0.4", 443, None),
        ("us.icr.io:443", "us.icr.io", 443, "us.icr.io:443"),
        ("us.icr.io:80", "us.icr.io", 443, None),
        ("  .SVC , .Cluster.Local ", "kube-dns.kube-system.svc", 443, ".svc"),
        ("icr.io", "dd0.us.icr.io", 443, "icr.io"),
        ("icr.io", "10.0.0.1", 443, None),  # domain entries never match addresses
        ("", "us.icr.io", 443, None),
        ("", "localhost", 443, "localhost"),
        ("", "::1", 443, "loopback"),
        ("*", "us.icr.io", 443, "*"),
    ],
)
def test_bypass_names_the_entry(no_proxy: str, host: str, port: int, entry: str | None) -> None:
    assert NoProxy.parse(no_proxy).bypass(host, port) == entry


def test_route_sends_each_name_its_own_way() -> None:
    proxy = parse_proxy("https://proxy.corp:8443")
    route = Route(ssl.create_default_context(), proxy, no_proxy=NoProxy.parse(".svc,10.0.0.0/8"))
    assert route.proxy_for("us.icr.io", 443) == (proxy, None)
    assert route.proxy_for("registry.kube-system.svc", 443) == (None, ".svc")
    assert route.proxy_for("10.1.2.3", 5000) == (None, "10.0.0.0/8")
    assert Route(ssl.create_default_context()).proxy_for("us.icr.io", 443) == (None, None)
