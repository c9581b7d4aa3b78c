"""`host:port` text: listen addresses in, endpoints out (IPv6 in brackets)."""

from __future__ import annotations

from portcullis.basics.ip import IPAddress


def split_hostport(text: str) -> tuple[str, str | None]:
    """`host`, `host:port`, `[v6]`, `[v6]:port` or a bare IPv6 address: the host
    (without brackets) and the port's text, None when there is none.

    ValueError for an unclosed bracket, or text after `]` that is not `:port`.
    """
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"{text!r}: write an IPv6 address as [::1] or [::1]:PORT")
        return host, rest[1:] if rest else None
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        return host, port
    return text, None  # a name, an IPv4 address, or a bare IPv6 address


def parse_hostport(value: str, *, default_host: str = "0.0.0.0") -> tuple[str, int]:
    """A listen address: `host:port`, `[v6]:port` or `:port`; port 0 asks the
    kernel for a free one."""
    try:
        host, port = split_hostport(value.strip())
    except ValueError:
        port = host = None
    if port is None:
        if host is None or ":" in host:
            raise ValueError(f"{value!r}: write an IPv6 listen address as [::1]:3128")
        raise ValueError(f"{value!r}: write a listen address as host:port, e.g. 0.0.0.0:3128")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{value!r}: the port must be a number from 0 to 65535")
    return host or default_host, int(port)


def format_hostport(host: str | IPAddress, port: int) -> str:
    """`host:port`, with an IPv6 address in brackets (`[::1]:443`)."""
    text = str(host)
    return f"[{text}]:{port}" if ":" in text else f"{text}:{port}"


def format_authority(host: str, port: int, default_port: int) -> str:
    """A Host header's value: `host`, or `host:port` when not the default port;
    an IPv6 literal in brackets either way."""
    if port != default_port:
        return format_hostport(host, port)
    return f"[{host}]" if ":" in host else host
