"""`NO_PROXY` read the way Go's golang.org/x/net/http/httpproxy reads it.

containerd, Docker, CRI-O and skopeo are Go programs and decide with that
package whether a registry connection goes through `HTTPS_PROXY`, so
`portcullis check` must decide the same way or it tests a path the runtime
never takes. Sans-IO: a string in, a verdict out.

The rules, as httpproxy has them:

- `localhost` and loopback addresses never go through a proxy;
- `*` sends everything direct;
- a CIDR (`10.0.0.0/8`, `2002:db8:a::45/64`) matches IP-literal hosts in it;
- an address, optionally with a port (`192.168.1.2:81`, `[2001:db8::2]:443`),
  matches that address (on that port);
- `example.com` matches the name and every name under it; `.example.com` and
  `*.example.com` only the names under it; a `:port` limits either to it;
- domain entries never match IP-literal hosts; entries are trimmed and
  lowercased, international names compared in their ASCII form; an entry with
  an empty host (`:1`) is ignored.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import idna

from portcullis.basics.ip import IPAddress, IPNetwork


@dataclass(frozen=True)
class _AddressEntry:
    entry: str
    network: IPNetwork | None  # a CIDR entry
    address: IPAddress | None  # an address entry
    port: str  # "" for any port

    def matches(self, ip: IPAddress, port: str) -> bool:
        if self.network is not None:
            return ip in self.network
        return ip == self.address and self.port in ("", port)


@dataclass(frozen=True)
class _DomainEntry:
    entry: str
    suffix: str  # always starts with "."
    apex: bool  # `example.com` also matches `example.com` itself
    port: str

    def matches(self, host: str, port: str) -> bool:
        hit = host.endswith(self.suffix) or (self.apex and host == self.suffix[1:])
        return hit and self.port in ("", port)


def _ascii(name: str) -> str:
    if name.isascii():
        return name
    try:
        return idna.encode(name, uts46=True).decode("ascii")
    except idna.IDNAError:
        return name  # httpproxy keeps a name it cannot convert


def _ip(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _split_host_port(text: str) -> tuple[str, str] | None:
    """Go's net.SplitHostPort: `host:port` or `[v6]:port`; None when there is no port."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1 : end + 2] != ":":
            return None
        return text[1:end], text[end + 2 :]
    host, sep, port = text.rpartition(":")
    if not sep or ":" in host:
        return None  # no port, or an unbracketed IPv6 address
    return host, port


def _entry(text: str) -> _AddressEntry | _DomainEntry | None:
    if "/" in text:
        try:
            return _AddressEntry(text, ipaddress.ip_network(text, strict=False), None, "")
        except ValueError:
            pass
    split = _split_host_port(text)
    host, port = split if split is not None else (text, "")
    # Go's ParseIP knows no zones, so `fe80::1%eth0` is not an address entry.
    address = None if "%" in host else _ip(host)
    if address is not None:
        return _AddressEntry(text, None, address, port)
    if not host:
        return None
    if host.startswith("*."):
        host = host[1:]
    apex = not host.startswith(".")
    suffix = "." + _ascii(host if apex else host[1:])
    return _DomainEntry(text, suffix, apex, port)


@dataclass(frozen=True)
class NoProxy:
    """A parsed `NO_PROXY` value; `bypass` says whether a host goes direct."""

    text: str
    everything: bool
    addresses: tuple[_AddressEntry, ...]
    domains: tuple[_DomainEntry, ...]

    @classmethod
    def parse(cls, text: str) -> NoProxy:
        addresses: list[_AddressEntry] = []
        domains: list[_DomainEntry] = []
        for raw in text.split(","):
            item = raw.strip().lower()
            if not item:
                continue
            if item == "*":
                return cls(text, True, (), ())
            entry = _entry(item)
            if isinstance(entry, _AddressEntry):
                addresses.append(entry)
            elif entry is not None:
                domains.append(entry)
        return cls(text, False, tuple(addresses), tuple(domains))

    def bypass(self, host: str, port: int | str) -> str | None:
        """Why `host:port` goes direct (the NO_PROXY entry, `localhost`,
        `loopback`, `*`), or None when it goes through the proxy."""
        port = str(port)
        if host == "localhost":
            return "localhost"
        ip = _ip(host.strip("[]"))
        if ip is not None and ip.is_loopback:
            return "loopback"
        if self.everything:
            return "*"
        name = _ascii(host.strip().lower())
        if ip is not None:
            for address in self.addresses:
                if address.matches(ip, port):
                    return address.entry
            return None
        for domain in self.domains:
            if domain.matches(name, port):
                return domain.entry
        return None


NO_PROXY_VARIABLES = ("NO_PROXY", "no_proxy")
