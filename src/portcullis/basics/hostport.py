"""`host:port` text: listen addresses in, endpoints out (IPv6 in brackets)."""

from __future__ import annotations

from portcullis.basics.ip import IPAddress


def parse_hostport(value: str, *, default_host: str = "0.0.0.0") -> tuple[str, int]:
    """`host:port`, `[v6]:port` or `:port`; port 0 asks the kernel for a free one."""
    text = value.strip()
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"{value!r}: write an IPv6 listen address as [::1]:3128")
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
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
